//! `migrate`, `migrate --dry-run` and `migrate status`.

use anyhow::Context as _;
use secrecy::ExposeSecret as _;

use crate::adapters::store;
use crate::app::config::{ConfigError, DbArgs, MigrateArgs, MigrateCommand};
use crate::app::config::{print_json, rfc3339, table};

/// Runs the command; plain `migrate` applies what is pending (creating the
/// database when it is missing), the others change nothing.
pub(crate) async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    match (args.command, args.dry_run) {
        (Some(MigrateCommand::Status { .. }), true) => Err(ConfigError {
            setting: "--dry-run",
            reason: "goes with `migrate`: `migrate status` changes nothing anyway".into(),
        }
        .into()),
        (Some(MigrateCommand::Status { output, db }), false) => {
            let migrations = migrations(&db).await?;
            let pending = migrations.iter().filter(|m| m.applied_at.is_none()).count();
            if output.json() {
                let list: Vec<serde_json::Value> = migrations
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.name,
                            "applied": m.applied_at.is_some(),
                            "appliedAt": m.applied_at.map(rfc3339),
                        })
                    })
                    .collect();
                print_json(&list.into());
                return Ok(());
            }
            print!(
                "{}",
                table(
                    ["state", "migration", "applied at"],
                    migrations.iter().map(|m| {
                        let state = if m.applied_at.is_some() { "applied" } else { "pending" };
                        [
                            state.to_string(),
                            m.name.clone(),
                            m.applied_at.map_or_else(String::new, rfc3339),
                        ]
                    })
                )
            );
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
