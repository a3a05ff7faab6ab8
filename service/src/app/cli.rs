//! Runs a parsed command line; returns the process exit code.

use secrecy::ExposeSecret;
use std::io::Read as _;

use chrono::Utc;

use crate::app::config::{Cli, Command, ConfigCommand, CredentialsCommand, TenantCommand};

/// 0 on a clean stop, 2 on bad configuration, 1 on any other failure.
pub async fn main(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run(args) => {
            let settings = match crate::app::validate(&args) {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let telemetry = init_logging(args.log_format.as_deref());
            let result = crate::app::run(*args, settings).await;
            telemetry.shutdown();
            result
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            // The demo prints its own table and events; the service inside
            // it logs only warnings and errors (unless RUST_LOG says more).
            let telemetry = crate::adapters::telemetry::init(Some("pretty"), "warn");
            let outcome = crate::app::demo::demo(args).await;
            telemetry.shutdown();
            return match outcome {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            };
        }
        // `runs show` reads what it may and says what it could not.
        Command::Runs(command) => crate::app::operator::runs(command).await,
        Command::Dlq(command) => {
            let user = crate::app::operator::nats_user_of_env();
            crate::app::operator::permitted(&user, crate::app::operator::dlq(command)).await
        }
        Command::Doctor(args) => return crate::app::operator::doctor(*args).await,
        Command::Config(ConfigCommand::Print(_)) => match crate::app::operator::config_print(std::env::args_os()) {
            Ok(text) => {
                print!("{text}");
                Ok(())
            }
            Err(e) => Err(e),
        },
        Command::Contract(command) => return crate::app::operator::contract(command),
        Command::Migrate(args) => crate::app::migrate::migrate(args).await,
        Command::Tenant(TenantCommand::Upsert {
            tenant_id,
            eid,
            tssd,
            db,
        }) => {
            async {
                let conn = crate::adapters::store::connect(db.database_url.expose_secret(), 1).await?;
                crate::adapters::store::tenants::upsert_tenant(&conn, tenant_id, eid.trim(), &tssd).await?;
                println!("tenant {tenant_id} stored");
                Ok(())
            }
            .await
        }
        Command::Credentials(CredentialsCommand::Upsert {
            tenant_id,
            user_id,
            mid,
            db,
            keys,
            ..
        }) => {
            let cipher = match keys.cipher() {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut token) {
                eprintln!("error: reading the refresh token from standard input: {e}");
                return 1;
            }
            let token = token.trim();
            if token.is_empty() {
                eprintln!("error: --refresh-token-stdin: standard input held no token");
                return 2;
            }
            async {
                let conn = crate::adapters::store::connect(db.database_url.expose_secret(), 1).await?;
                crate::adapters::store::credentials::upsert_credentials(
                    &conn,
                    tenant_id,
                    user_id,
                    &mid,
                    cipher.encrypt(token),
                    Utc::now(),
                )
                .await?;
                println!("credentials for user {user_id} in business unit {mid} stored");
                Ok(())
            }
            .await
        }
    };
    match result {
        Ok(()) => 0,
        // A setting found bad while a command ran (operators' commands).
        Err(e) if e.chain().any(|c| c.is::<crate::app::config::ConfigError>()) => {
            eprintln!("error: {}", error_text(&e));
            2
        }
        Err(e) => {
            tracing::error!(error = error_text(&e), "failed");
            eprintln!("error: {}", error_text(&e));
            1
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose
/// text an outer one already holds (a database error wrapping the
/// driver's, word for word) is left out.
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        let part = part.trim();
        if part.is_empty() || text.contains(part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(part);
    }
    text
}

fn config_error(e: crate::app::config::ConfigError) -> i32 {
    eprintln!("error: {e}");
    2
}

fn init_logging(format: Option<&str>) -> crate::adapters::telemetry::Telemetry {
    crate::adapters::telemetry::init(format, "info")
}
