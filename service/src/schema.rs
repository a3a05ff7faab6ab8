//! The result schema of a query: which columns the temp Data Extension gets.
//!
//! This is the first, minimal inference: the select list of the outermost
//! SELECT, typed from the message's `tableMetadata` where a column maps to a
//! known field, else Text(254). `SELECT *` expands from `tableMetadata`.
//! Pure: no I/O.

use std::collections::HashMap;

use serde::Deserialize;
use sqlparser::ast::{Expr, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor};
use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;

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
    /// MCE's names; `Email` is EmailAddress, anything unknown is Text.
    pub fn from_mce(name: &str) -> Self {
        match name.trim().to_ascii_lowercase().as_str() {
            "number" => Self::Number,
            "decimal" => Self::Decimal,
            "date" => Self::Date,
            "boolean" => Self::Boolean,
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
}

/// One column of a Data Extension.
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

/// A field as the API sends it in `tableMetadata`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct MetadataField {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "FieldType", default)]
    pub field_type: Option<String>,
    #[serde(rename = "MaxLength", default)]
    pub max_length: Option<u32>,
    #[serde(rename = "Scale", default)]
    pub scale: Option<u32>,
    #[serde(rename = "Precision", default)]
    pub precision: Option<u32>,
}

pub type TableMetadata = HashMap<String, Vec<MetadataField>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("Unable to parse the query: {0}")]
    Parse(String),
    #[error("Only a SELECT query can run")]
    NotSelect,
    #[error("Unable to expand SELECT *. Please specify columns explicitly.")]
    StarExpansion,
    #[error("Unable to determine result schema. Please check your query.")]
    Empty,
    #[error("The query returns the column \"{0}\" more than once")]
    DuplicateColumn(String),
}

const DEFAULT_TEXT: u32 = 254;

fn strip_brackets(name: &str) -> String {
    name.trim().trim_start_matches('[').trim_end_matches(']').to_string()
}

fn lookup<'a>(metadata: &'a TableMetadata, table: &str) -> Option<&'a Vec<MetadataField>> {
    let wanted = strip_brackets(table);
    metadata
        .iter()
        .find(|(name, _)| strip_brackets(name).eq_ignore_ascii_case(&wanted))
        .map(|(_, fields)| fields)
}

fn to_field(name: &str, meta: Option<&MetadataField>) -> DeField {
    match meta {
        None => DeField::text(name, DEFAULT_TEXT),
        Some(m) => {
            let field_type = m
                .field_type
                .as_deref()
                .map(FieldType::from_mce)
                .unwrap_or(FieldType::Text);
            let max_length = match field_type {
                FieldType::Text | FieldType::EmailAddress | FieldType::Phone => {
                    Some(m.max_length.unwrap_or(DEFAULT_TEXT))
                }
                _ => None,
            };
            let (scale, precision) = match field_type {
                FieldType::Decimal => (Some(m.scale.unwrap_or(2)), Some(m.precision.unwrap_or(18))),
                _ => (None, None),
            };
            DeField {
                name: name.to_string(),
                field_type,
                max_length,
                scale,
                precision,
            }
        }
    }
}

/// Infers the columns of `sql`'s result.
pub fn infer(sql: &str, metadata: &TableMetadata) -> Result<Vec<DeField>, SchemaError> {
    let statements = Parser::parse_sql(&MsSqlDialect {}, sql).map_err(|e| SchemaError::Parse(e.to_string()))?;
    let Some(Statement::Query(query)) = statements.first() else {
        return Err(SchemaError::NotSelect);
    };
    let mut body = query.body.as_ref();
    // A UNION's columns are its first branch's.
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_ref();
    }
    let SetExpr::Select(select) = body else {
        return Err(SchemaError::NotSelect);
    };
    // alias (or table name) -> table name, in FROM order.
    let mut tables: Vec<(String, String)> = Vec::new();
    for twj in &select.from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            if let TableFactor::Table { name, alias, .. } = factor {
                let table = strip_brackets(&name.to_string());
                let key = alias
                    .as_ref()
                    .map(|a| a.name.value.clone())
                    .unwrap_or_else(|| table.clone());
                tables.push((key, table));
            }
        }
    }
    let field_in = |table: &str, column: &str| -> Option<&MetadataField> {
        lookup(metadata, table)?
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(column))
    };
    let typed = |qualifier: Option<&str>, column: &str| -> DeField {
        let meta = match qualifier {
            Some(q) => tables
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(q))
                .and_then(|(_, t)| field_in(t, column)),
            None => tables.iter().find_map(|(_, t)| field_in(t, column)),
        };
        to_field(column, meta)
    };

    let mut fields = Vec::new();
    for (i, item) in select.projection.iter().enumerate() {
        match item {
            SelectItem::UnnamedExpr(Expr::Identifier(id)) => fields.push(typed(None, &id.value)),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                let column = &parts.last().expect("a compound identifier has parts").value;
                let qualifier = parts.len().checked_sub(2).map(|q| parts[q].value.as_str());
                fields.push(typed(qualifier, column));
            }
            SelectItem::UnnamedExpr(_) => fields.push(DeField::text(&format!("Column{}", i + 1), DEFAULT_TEXT)),
            SelectItem::ExprWithAlias { expr, alias } => {
                let mut field = match expr {
                    Expr::Identifier(id) => typed(None, &id.value),
                    Expr::CompoundIdentifier(parts) => {
                        let column = &parts.last().expect("a compound identifier has parts").value;
                        let qualifier = parts.len().checked_sub(2).map(|q| parts[q].value.as_str());
                        typed(qualifier, column)
                    }
                    _ => DeField::text(&alias.value, DEFAULT_TEXT),
                };
                field.name = alias.value.clone();
                fields.push(field);
            }
            SelectItem::Wildcard(_) => {
                for (_, table) in &tables {
                    let known = lookup(metadata, table).ok_or(SchemaError::StarExpansion)?;
                    fields.extend(known.iter().map(|m| to_field(&m.name, Some(m))));
                }
            }
            SelectItem::ExprWithAliases { aliases, .. } => {
                fields.extend(aliases.iter().map(|a| DeField::text(&a.value, DEFAULT_TEXT)));
            }
            SelectItem::QualifiedWildcard(kind, _) => {
                let SelectItemQualifiedWildcardKind::ObjectName(name) = kind else {
                    return Err(SchemaError::StarExpansion);
                };
                let qualifier = strip_brackets(&name.to_string());
                let (_, table) = tables
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&qualifier))
                    .ok_or(SchemaError::StarExpansion)?;
                let known = lookup(metadata, table).ok_or(SchemaError::StarExpansion)?;
                fields.extend(known.iter().map(|m| to_field(&m.name, Some(m))));
            }
        }
    }
    if fields.is_empty() {
        return Err(SchemaError::Empty);
    }
    let mut seen = std::collections::HashSet::new();
    for f in &fields {
        if !seen.insert(f.name.to_ascii_lowercase()) {
            return Err(SchemaError::DuplicateColumn(f.name.clone()));
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TableMetadata {
        serde_json::from_str(
            r#"{ "Subscribers_DE": [ { "Name": "Email", "FieldType": "EmailAddress", "MaxLength": 254 },
                                     { "Name": "Age", "FieldType": "Number" },
                                     { "Name": "Total", "FieldType": "Decimal", "Scale": 4, "Precision": 12 } ] }"#,
        )
        .unwrap()
    }

    fn check(sql: &str, expected: &[(&str, FieldType, Option<u32>)]) {
        let got = infer(sql, &meta()).unwrap();
        let got: Vec<_> = got
            .iter()
            .map(|f| (f.name.as_str(), f.field_type, f.max_length))
            .collect();
        assert_eq!(got, expected, "{sql}");
    }

    #[test]
    fn columns_take_types_from_metadata_else_text_254() {
        check(
            "SELECT Email, s.Age, Unknown FROM [Subscribers_DE] s",
            &[
                ("Email", FieldType::EmailAddress, Some(254)),
                ("Age", FieldType::Number, None),
                ("Unknown", FieldType::Text, Some(254)),
            ],
        );
        check(
            "SELECT Email AS Mail, UPPER(Email) AS Up FROM Subscribers_DE",
            &[
                ("Mail", FieldType::EmailAddress, Some(254)),
                ("Up", FieldType::Text, Some(254)),
            ],
        );
        check(
            "SELECT COUNT(*) FROM Subscribers_DE",
            &[("Column1", FieldType::Text, Some(254))],
        );
    }

    #[test]
    fn stars_expand_from_metadata() {
        check(
            "SELECT * FROM [Subscribers_DE]",
            &[
                ("Email", FieldType::EmailAddress, Some(254)),
                ("Age", FieldType::Number, None),
                ("Total", FieldType::Decimal, None),
            ],
        );
        check(
            "SELECT s.* FROM Subscribers_DE s",
            &[
                ("Email", FieldType::EmailAddress, Some(254)),
                ("Age", FieldType::Number, None),
                ("Total", FieldType::Decimal, None),
            ],
        );
        assert_eq!(
            infer("SELECT * FROM Other", &meta()).unwrap_err(),
            SchemaError::StarExpansion
        );
    }

    #[test]
    fn bad_queries_are_clear_errors() {
        assert!(matches!(infer("SELEC x", &meta()), Err(SchemaError::Parse(_))));
        assert_eq!(infer("DELETE FROM x", &meta()).unwrap_err(), SchemaError::NotSelect);
        assert_eq!(
            infer("SELECT Email, Email FROM Subscribers_DE", &meta()).unwrap_err(),
            SchemaError::DuplicateColumn("Email".into())
        );
    }
}
