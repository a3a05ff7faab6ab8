//! Step 2: MCE validates the SQL (advisory while MCE is briefly away), the
//! tables the query reads that the message did not describe are looked up
//! in MCE once per run, and the output columns are typed (stars expanded;
//! an expanded query is validated again).
//!
//! A run-to-target needs no inference (the target's fields exist): when
//! the SQL is beyond this service's parser, MCE's validation is the judge,
//! as in the reference, and the query runs as written ([`Analysed::Unparsed`]).

use shell_query_core::message::ExecuteRequest;
use shell_query_core::schema::{self, Analysis, Catalog, SchemaError};

use super::failure::{Failure, best_effort};
use crate::adapters::mce::Session;

/// What the analysis made of the query.
pub(super) enum Analysed {
    Parsed(Analysis),
    /// Run-to-target SQL this service cannot parse, which MCE validated:
    /// it runs as written, without the client-side target checks.
    Unparsed {
        sql: String,
    },
}

impl Analysed {
    /// The SQL the QueryDefinition carries.
    pub(crate) fn sql(&self) -> &str {
        match self {
            Analysed::Parsed(a) => &a.sql,
            Analysed::Unparsed { sql } => sql,
        }
    }
}

pub(super) async fn analyse(session: &Session<'_>, req: &ExecuteRequest, sql: &str) -> Result<Analysed, Failure> {
    let validated = validate(session, sql).await?;
    let mut catalog = Catalog::from_metadata(&req.table_metadata);
    fetch_metadata(session, sql, &mut catalog).await?;
    let analysis = match schema::analyse(sql, &catalog) {
        Ok(analysis) => analysis,
        Err(SchemaError::Parse(_) | SchemaError::TooDeep(_)) if req.target.is_some() => {
            if !validated {
                // Neither the parser nor MCE has checked it: never run it blind.
                return Err(Failure::Transient(
                    "MCE could not validate a query this service cannot parse".into(),
                ));
            }
            tracing::info!(
                "the query is beyond this service's parser; MCE validated it, so it runs into its target as written"
            );
            return Ok(Analysed::Unparsed { sql: sql.to_string() });
        }
        Err(e) => return Err(Failure::Permanent(e.to_string())),
    };
    if analysis.sql != sql {
        // The stars were expanded: MCE checks the query that will really run.
        let _ = validate(session, &analysis.sql).await?;
    }
    Ok(Analysed::Parsed(analysis))
}

/// True if MCE validated the query; false if it was briefly unavailable
/// (validation is then advisory: the run goes on, failing open).
async fn validate(session: &Session<'_>, sql: &str) -> Result<bool, Failure> {
    match session.validate(sql).await {
        Ok(v) if v.valid => Ok(true),
        Ok(v) => Err(Failure::Permanent(v.errors.join("\n"))),
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "validation unavailable; continuing");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The most tables one run looks up in MCE (two SOAP calls each): a query
/// naming thousands cannot hold an execute slot for hours.
const MAX_TABLE_LOOKUPS: usize = 50;

/// Adds to the catalog the fields of every table the query reads that it
/// does not know yet: the DE by Name, then its fields (two SOAP calls per
/// table, once per run, at most [`MAX_TABLE_LOOKUPS`] tables). A table MCE
/// does not know, or past the limit, stays unknown.
async fn fetch_metadata(session: &Session<'_>, sql: &str, catalog: &mut Catalog) -> Result<(), Failure> {
    let Ok(tables) = schema::referenced_tables(sql) else {
        return Ok(()); // the analysis reports the parse error
    };
    let mut unknown: Vec<String> = tables.into_iter().filter(|t| !catalog.knows(t)).collect();
    unknown.dedup();
    unknown.truncate(MAX_TABLE_LOOKUPS);
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
