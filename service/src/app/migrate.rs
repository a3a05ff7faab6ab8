//! `migrate`, `migrate --dry-run` and `migrate status`.

use anyhow::Context as _;
use secrecy::ExposeSecret as _;

use crate::adapters::store;
use crate::app::config::{ConfigError, DbArgs, MigrateArgs, MigrateCommand};

/// Runs the command; plain `migrate` applies what is pending (creating the
/// database when it is missing), the others change nothing.
pub(crate) async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    match (args.command, args.dry_run) {
        (Some(MigrateCommand::Status { .. }), true) => Err(ConfigError {
            setting: "--dry-run",
            reason: "goes with `migrate`: `migrate status` changes nothing anyway".into(),
        }
        .into()),
        (Some(MigrateCommand::Status { db }), false) => {
            let migrations = migrations(&db).await?;
            let pending = migrations.iter().filter(|m| m.applied_at.is_none()).count();
            for m in &migrations {
                match m.applied_at {
                    Some(at) => println!(
                        "applied  {:<45}  {}",
                        m.name,
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    None => println!("pending  {}", m.name),
                }
            }
            println!("{} applied, {pending} pending", migrations.len() - pending);
            Ok(())
        }
        (None, true) => {
            let pending: Vec<_> = migrations(&args.db)
                .await?
                .into_iter()
                .filter(|m| m.applied_at.is_none())
                .collect();
            for m in &pending {
                println!("would apply  {}", m.name);
            }
            println!("{} migration(s) would be applied; nothing was applied", pending.len());
            Ok(())
        }
        (None, false) => {
            let _telemetry = crate::adapters::telemetry::init(None, "info");
            store::migrate(args.db.database_url.expose_secret())
                .await
                .map_err(Into::into)
        }
    }
}

/// Every migration and its state, read without changing the database.
async fn migrations(db: &DbArgs) -> anyhow::Result<Vec<store::MigrationState>> {
    let store = crate::app::operator::database(db).await?;
    store
        .migrations()
        .await
        .context("reading the applied migrations (seaql_migrations)")
}
