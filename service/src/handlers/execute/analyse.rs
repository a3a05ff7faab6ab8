//! Step 2: MCE validates the SQL (advisory while MCE is briefly away), the
//! tables the query reads that the message did not describe are looked up
//! in MCE once per run, and the output columns are typed (stars expanded;
//! an expanded query is validated again).

use shell_query_core::message::ExecuteRequest;
use shell_query_core::schema::{self, Analysis, Catalog};

use super::{Failure, best_effort};
use crate::adapters::mce::Session;

pub(super) async fn analyse(session: &Session<'_>, req: &ExecuteRequest, sql: &str) -> Result<Analysis, Failure> {
    validate(session, sql).await?;
    let mut catalog = Catalog::from_metadata(&req.table_metadata);
    fetch_metadata(session, sql, &mut catalog).await?;
    let analysis = schema::analyse(sql, &catalog).map_err(|e| Failure::Permanent(e.to_string()))?;
    if analysis.sql != sql {
        // The stars were expanded: MCE checks the query that will really run.
        validate(session, &analysis.sql).await?;
    }
    Ok(analysis)
}

async fn validate(session: &Session<'_>, sql: &str) -> Result<(), Failure> {
    match session.validate(sql).await {
        Ok(v) if v.valid => Ok(()),
        Ok(v) => Err(Failure::Permanent(v.errors.join("\n"))),
        // Validation is advisory while MCE is briefly unavailable: fail open.
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "validation unavailable; continuing");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Adds to the catalog the fields of every table the query reads that it
/// does not know yet: the DE by Name, then its fields (two SOAP calls per
/// table, once per run). A table MCE does not know stays unknown.
async fn fetch_metadata(session: &Session<'_>, sql: &str, catalog: &mut Catalog) -> Result<(), Failure> {
    let Ok(tables) = schema::referenced_tables(sql) else {
        return Ok(()); // the analysis reports the parse error
    };
    let unknown: Vec<String> = tables.into_iter().filter(|t| !catalog.knows(t)).collect();
    for table in &unknown {
        let name = match table.split_once('.') {
            Some((ent, rest)) if ent.eq_ignore_ascii_case("ent") => rest,
            _ => table.as_str(),
        };
        let Some(de) = best_effort(session.find_data_extension(name, false).await)?.flatten() else {
            continue;
        };
        let Some(fields) = best_effort(session.data_extension_fields(&de.customer_key).await)? else {
            continue;
        };
        let fields: Vec<schema::SourceField> = fields
            .iter()
            .map(|f| {
                schema::MetadataField {
                    name: f.name.clone(),
                    field_type: Some(f.field_type.clone()),
                    max_length: f.max_length,
                    scale: None,
                    precision: None,
                }
                .to_source()
            })
            .collect();
        if !fields.is_empty() {
            catalog.insert(table, fields);
        }
    }
    Ok(())
}
