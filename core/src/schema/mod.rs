//! What a query returns and what it reads (ARCHITECTURE.md, "How a run
//! moves: Execute", step 2).
//!
//! `SELECT *` and `alias.*` are expanded in the SQL text itself (only the
//! star is replaced, so the rest of the query reaches MCE exactly as
//! written), at every level whose columns reach the output: the outer
//! SELECT, UNION branches, CTE bodies and derived tables. Stars inside
//! `EXISTS`/`IN` subqueries are left alone. Column types come from the
//! catalog (the message's `tableMetadata`, MCE's field lists, or MCE's
//! system data views) and from the expression; see `infer.rs` for the rules.
//!
//! Naming rules (stable, documented in docs/DECISIONS.md): an output column
//! is named by its alias, else by its column name; an unnamed expression is
//! an error asking for an alias (MCE cannot write it to a field); names are
//! never shortened (a name over 128 characters is an error); a star column
//! whose name repeats an earlier one gets the alias `<name>_<n>`; an
//! explicit repeat is an error.
//!
//! Pure: no I/O. The caller gathers the catalog first (`referenced_tables`
//! tells which tables to look up).

mod depth;
mod infer;
mod target;
mod views;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlparser::ast::{Statement, Visit, Visitor};

pub use depth::{MAX_DEPTH, MAX_NESTING};
pub use target::{TargetField, TargetMode, UpdateType, check_target};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Number,
    Decimal,
    Date,
    Boolean,
    EmailAddress,
    Phone,
}

impl FieldType {
    /// MCE's and SQL's type names: `Number`, `INT`, `Decimal(18,2)`,
    /// `Text(50)`, `EmailAddress`, `BIT`... anything unknown is Text.
    pub fn from_mce(name: &str) -> Self {
        let base = name.trim().split('(').next().unwrap_or("").trim().to_ascii_lowercase();
        match base.as_str() {
            "number" | "int" | "integer" | "bigint" | "smallint" | "tinyint" => Self::Number,
            "decimal" | "numeric" | "float" | "double" | "real" | "money" => Self::Decimal,
            "date" | "datetime" | "datetime2" | "smalldatetime" => Self::Date,
            "boolean" | "bool" | "bit" => Self::Boolean,
            "emailaddress" | "email" => Self::EmailAddress,
            "phone" => Self::Phone,
            _ => Self::Text,
        }
    }

    pub fn as_mce(self) -> &'static str {
        match self {
            Self::Text => "Text",
            Self::Number => "Number",
            Self::Decimal => "Decimal",
            Self::Date => "Date",
            Self::Boolean => "Boolean",
            Self::EmailAddress => "EmailAddress",
            Self::Phone => "Phone",
        }
    }

    fn is_textual(self) -> bool {
        matches!(self, Self::Text | Self::EmailAddress | Self::Phone)
    }
}

/// One column of a Data Extension to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeField {
    pub name: String,
    pub field_type: FieldType,
    pub max_length: Option<u32>,
    pub scale: Option<u32>,
    pub precision: Option<u32>,
}

impl DeField {
    pub fn text(name: &str, max_length: u32) -> Self {
        Self {
            name: name.to_string(),
            field_type: FieldType::Text,
            max_length: Some(max_length),
            scale: None,
            precision: None,
        }
    }
}

/// A column of a source or of the output, with what is known of its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceField {
    pub name: String,
    pub field_type: FieldType,
    pub max_length: Option<u32>,
    pub scale: Option<u32>,
    pub precision: Option<u32>,
    /// The type comes from metadata or a typed expression, not a default guess.
    pub known: bool,
}

pub const DEFAULT_TEXT: u32 = 254;
/// Text produced by a string function of unknown length.
pub const FUNCTION_TEXT: u32 = 4000;
/// The longest output column name accepted.
pub const MAX_NAME_CHARS: usize = 128;

impl SourceField {
    pub fn to_de_field(&self) -> DeField {
        let (max_length, scale, precision) = match self.field_type {
            t if t.is_textual() => (Some(self.max_length.unwrap_or(DEFAULT_TEXT)), None, None),
            FieldType::Decimal => (None, Some(self.scale.unwrap_or(2)), Some(self.precision.unwrap_or(18))),
            _ => (None, None, None),
        };
        DeField {
            name: self.name.clone(),
            field_type: self.field_type,
            max_length,
            scale,
            precision,
        }
    }
}

/// A field as the API sends it in `tableMetadata`, or as MCE lists it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct MetadataField {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "FieldType", default, skip_serializing_if = "Option::is_none")]
    pub field_type: Option<String>,
    #[serde(rename = "MaxLength", default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    #[serde(rename = "Scale", default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    #[serde(rename = "Precision", default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
}

impl MetadataField {
    pub fn to_source(&self) -> SourceField {
        let raw = self.field_type.as_deref().unwrap_or("Text");
        let field_type = FieldType::from_mce(raw);
        // `Text(50)`, `Decimal(12,4)`: sizes written into the type name.
        let sizes: Vec<u32> = raw
            .split_once('(')
            .map(|(_, rest)| {
                rest.trim_end_matches(')')
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let (max_length, precision, scale) = match field_type {
            t if t.is_textual() => (self.max_length.or(sizes.first().copied()), None, None),
            FieldType::Decimal => (
                None,
                self.precision.or(sizes.first().copied()),
                self.scale.or(sizes.get(1).copied()),
            ),
            _ => (None, None, None),
        };
        SourceField {
            name: self.name.clone(),
            field_type,
            max_length,
            scale,
            precision,
            known: true,
        }
    }
}

pub type TableMetadata = HashMap<String, Vec<MetadataField>>;

/// The key a table is known by: brackets stripped, a leading `ENT.` dropped,
/// lower case.
pub fn normalize_table(name: &str) -> String {
    let parts: Vec<String> = name
        .split('.')
        .map(|p| p.trim().trim_start_matches('[').trim_end_matches(']').to_string())
        .collect();
    let parts: Vec<&String> = match parts.first() {
        Some(first) if parts.len() > 1 && first.eq_ignore_ascii_case("ent") => parts[1..].iter().collect(),
        _ => parts.iter().collect(),
    };
    parts
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(".")
        .to_ascii_lowercase()
}

/// The columns of every table a query may read.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    tables: HashMap<String, Vec<SourceField>>,
}

impl Catalog {
    pub fn from_metadata(metadata: &TableMetadata) -> Self {
        let mut catalog = Self::default();
        for (name, fields) in metadata.iter().filter(|(_, f)| !f.is_empty()) {
            catalog.insert(name, fields.iter().map(MetadataField::to_source).collect());
        }
        catalog
    }

    pub fn insert(&mut self, table: &str, fields: Vec<SourceField>) {
        self.tables.insert(normalize_table(table), fields);
    }

    /// Known columns: given metadata first, then MCE's system data views.
    pub fn lookup(&self, table: &str) -> Option<Vec<SourceField>> {
        let key = normalize_table(table);
        self.tables.get(&key).cloned().or_else(|| views::columns(&key))
    }

    /// Whether a table needs no lookup (known here or a system data view).
    pub fn knows(&self, table: &str) -> bool {
        self.lookup(table).is_some()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("The query could not be parsed: {0}")]
    Parse(String),
    #[error("Only a single SELECT query can run.")]
    NotSelect,
    #[error("Unable to expand SELECT * for \"{0}\": its columns are unknown. Please specify columns explicitly.")]
    StarExpansion(String),
    #[error("Unable to determine result schema. Please check your query.")]
    Empty,
    #[error("Column {0} has no name. Give it an alias, for example `COUNT(*) AS Total`.")]
    Unnamed(usize),
    #[error("The query returns the column \"{0}\" more than once. Give each column a unique alias.")]
    DuplicateColumn(String),
    #[error("The column name \"{0}…\" is longer than 128 characters. Give it a shorter alias.")]
    NameTooLong(String),
    #[error(
        "The query is nested too deeply to analyse (more than {0} levels of expressions or subqueries). Please simplify it."
    )]
    TooDeep(usize),
}

/// The one query in `sql`; every walk over user SQL starts here, so the
/// depth bounds (`depth.rs`) hold for all of them.
fn parse_one(sql: &str) -> Result<Statement, SchemaError> {
    let mut statements = depth::parse(sql)?;
    if statements.len() != 1 {
        return Err(SchemaError::NotSelect);
    }
    match statements.remove(0) {
        s @ Statement::Query(_) => Ok(s),
        _ => Err(SchemaError::NotSelect),
    }
}

/// Every table the query reads, at any depth (CTEs, UNION branches,
/// subqueries), as written but without brackets; CTE names are not tables.
pub fn referenced_tables(sql: &str) -> Result<Vec<String>, SchemaError> {
    depth::on_own_stack(|| tables_here(sql))
}

/// `referenced_tables` on the caller's stack.
fn tables_here(sql: &str) -> Result<Vec<String>, SchemaError> {
    struct Relations {
        names: Vec<String>,
        ctes: Vec<String>,
    }
    impl Visitor for Relations {
        type Break = ();
        fn pre_visit_query(&mut self, query: &sqlparser::ast::Query) -> std::ops::ControlFlow<()> {
            if let Some(with) = &query.with {
                self.ctes
                    .extend(with.cte_tables.iter().map(|c| c.alias.name.value.to_ascii_lowercase()));
            }
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, relation: &sqlparser::ast::ObjectName) -> std::ops::ControlFlow<()> {
            let written = relation.to_string();
            let name: Vec<String> = written
                .split('.')
                .map(|p| p.trim_start_matches('[').trim_end_matches(']').to_string())
                .collect();
            self.names.push(name.join("."));
            std::ops::ControlFlow::Continue(())
        }
    }
    let statement = parse_one(sql)?;
    let mut v = Relations {
        names: Vec::new(),
        ctes: Vec::new(),
    };
    let _ = statement.visit(&mut v);
    let mut out: Vec<String> = Vec::new();
    for name in v.names {
        let key = normalize_table(&name);
        if v.ctes.contains(&key) || out.iter().any(|o| normalize_table(o) == key) {
            continue;
        }
        out.push(name);
    }
    Ok(out)
}

/// The query as it will run, and the Data Extension fields it fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// The SQL with every star that reaches the output replaced by its columns.
    pub sql: String,
    pub fields: Vec<DeField>,
    /// The output columns with what is known of their types.
    pub columns: Vec<SourceField>,
}

/// Expands stars and infers the output columns.
pub fn analyse(sql: &str, catalog: &Catalog) -> Result<Analysis, SchemaError> {
    depth::on_own_stack(|| analyse_here(sql, catalog))
}

/// `analyse` on the caller's stack.
fn analyse_here(sql: &str, catalog: &Catalog) -> Result<Analysis, SchemaError> {
    let Statement::Query(query) = parse_one(sql)? else {
        return Err(SchemaError::NotSelect);
    };
    let mut walker = infer::Walker::new(sql, catalog);
    let columns = walker.query_columns(&query, &HashMap::new(), true)?;
    if columns.is_empty() {
        return Err(SchemaError::Empty);
    }
    let sql = walker.rewritten();
    let fields = columns.iter().map(SourceField::to_de_field).collect();
    Ok(Analysis { sql, fields, columns })
}

#[cfg(test)]
mod tests;
