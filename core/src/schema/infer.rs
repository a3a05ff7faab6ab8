//! The walk over a parsed query: sources in scope, output columns, their
//! types, and the text edits that expand stars.
//!
//! Type rules (reference/REFERENCE-BEHAVIOUR.md 3.7, with its faults fixed):
//! - a column: its catalog type (qualified by alias or table, else the first
//!   source that has it); unknown: Text(254);
//! - `CAST`/`CONVERT`: the target type (`VARCHAR(n)` is Text(n), `MAX` 4000,
//!   `DECIMAL(p,s)` keeps p and s, `INT` Number, `DATE`/`DATETIME` Date,
//!   `BIT` Boolean);
//! - `CASE`, `ISNULL`, `COALESCE`, `IIF`, `NULLIF`: the common type of the
//!   branches or arguments (Number with Decimal is Decimal, Text takes the
//!   longest length, a mix of Text with others is Text);
//! - `MIN`/`MAX`/`ABS`/`ROUND`/`FLOOR`/`CEILING`: the argument's type;
//! - `COUNT`, `COUNT_BIG`: Number; `SUM`: Decimal of a Decimal, else Number;
//!   `AVG`, `STDEV`, `VAR`...: Decimal(18,2);
//! - `LEN`, `CHARINDEX`, `PATINDEX`, `DATALENGTH`, `DAY`, `MONTH`, `YEAR`,
//!   `DATEPART`, `DATEDIFF`, `SIGN`, `ISNUMERIC`: Number;
//! - `SQRT`, `POWER`, `LOG`, `LOG10`, `EXP`, `SQUARE`, `PI`, `RAND`: Decimal(18,2);
//! - `GETDATE`, `DATEADD`, `EOMONTH`, `DATEFROMPARTS`, `SYSDATETIME`...: Date;
//! - `UPPER`, `LOWER`, `TRIM`, `LTRIM`, `RTRIM`, `REVERSE`: the argument's
//!   Text length; `LEFT(x, n)`, `RIGHT(x, n)`, `SUBSTRING(x, s, n)`: Text(n);
//!   other string functions: Text(4000); `NEWID()`: Text(36);
//! - literals: integers Number, decimals Decimal(18, digits after the
//!   point), strings Text(254) or their length if longer, `NULL` Text(254);
//! - `a + b` etc.: Decimal if either side is Decimal, else Number if either is
//!   Number and neither is Text, else Text (lengths add up);
//! - a scalar subquery: its first column's type; anything else: Text(254).

use std::collections::HashMap;

use sqlparser::ast::{
    BinaryOperator, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Spanned, TableFactor, TableWithJoins, UnaryOperator, Value,
};
use sqlparser::tokenizer::{Location, Span};

use super::{Catalog, DEFAULT_TEXT, FUNCTION_TEXT, FieldType, MAX_NAME_CHARS, SchemaError, SourceField};

/// A FROM source: how the query refers to it and its columns, if known.
struct Source {
    /// Alias, else the table's last name part (lower case).
    key: String,
    /// What to write before a column: the alias or table as written.
    qualifier: String,
    /// For messages.
    table: String,
    columns: Option<Vec<SourceField>>,
}

type Ctes = HashMap<String, Vec<SourceField>>;

pub(super) struct Walker<'a> {
    sql: &'a str,
    catalog: &'a Catalog,
    /// (start byte, end byte, replacement)
    edits: Vec<(usize, usize, String)>,
}

fn guess(field_type: FieldType, max_length: Option<u32>) -> SourceField {
    SourceField {
        name: String::new(),
        field_type,
        max_length,
        scale: None,
        precision: None,
        known: false,
    }
}

fn typed(field_type: FieldType, max_length: Option<u32>) -> SourceField {
    SourceField {
        known: true,
        ..guess(field_type, max_length)
    }
}

fn decimal(precision: u32, scale: u32) -> SourceField {
    SourceField {
        precision: Some(precision),
        scale: Some(scale),
        ..typed(FieldType::Decimal, None)
    }
}

fn text_default() -> SourceField {
    guess(FieldType::Text, Some(DEFAULT_TEXT))
}

/// The common type of branches (CASE, COALESCE...): NULLs are skipped.
fn common(types: Vec<SourceField>) -> SourceField {
    let mut it = types.into_iter();
    let Some(mut acc) = it.next() else {
        return text_default();
    };
    for t in it {
        acc = match (acc.field_type, t.field_type) {
            (a, b) if a == b && a.is_textual() => SourceField {
                max_length: acc.max_length.max(t.max_length),
                known: acc.known && t.known,
                ..acc
            },
            (FieldType::Decimal, FieldType::Decimal) => SourceField {
                precision: acc.precision.max(t.precision),
                scale: acc.scale.max(t.scale),
                ..acc
            },
            (a, b) if a == b => acc,
            (FieldType::Number, FieldType::Decimal) => t,
            (FieldType::Decimal, FieldType::Number) => acc,
            (a, b) if a.is_textual() || b.is_textual() => guess(
                FieldType::Text,
                Some(
                    acc.max_length
                        .max(t.max_length)
                        .unwrap_or(DEFAULT_TEXT)
                        .max(DEFAULT_TEXT),
                ),
            ),
            _ => text_default(),
        };
    }
    acc
}

fn is_null(e: &Expr) -> bool {
    matches!(e, Expr::Value(v) if matches!(v.value, Value::Null))
}

fn data_type(dt: &DataType) -> SourceField {
    let text = dt.to_string().to_ascii_uppercase();
    let base = text.split('(').next().unwrap_or("").trim().to_string();
    let sizes: Vec<String> = text
        .split_once('(')
        .map(|(_, rest)| {
            rest.trim_end_matches(')')
                .split(',')
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let size = |i: usize| sizes.get(i).and_then(|s| s.parse::<u32>().ok());
    match base.as_str() {
        "INT" | "INTEGER" | "BIGINT" | "SMALLINT" | "TINYINT" => typed(FieldType::Number, None),
        "DECIMAL" | "NUMERIC" | "DEC" => decimal(size(0).unwrap_or(18), size(1).unwrap_or(0)),
        "FLOAT" | "REAL" | "DOUBLE" | "MONEY" | "SMALLMONEY" => decimal(18, 2),
        "DATE" | "DATETIME" | "DATETIME2" | "SMALLDATETIME" | "DATETIMEOFFSET" | "TIMESTAMP" => {
            typed(FieldType::Date, None)
        }
        "BIT" | "BOOLEAN" => typed(FieldType::Boolean, None),
        "VARCHAR" | "NVARCHAR" | "CHAR" | "NCHAR" | "CHARACTER VARYING" | "TEXT" | "NTEXT" => {
            let len = if sizes.first().is_some_and(|s| s == "MAX") {
                FUNCTION_TEXT
            } else {
                size(0).unwrap_or(30)
            };
            typed(FieldType::Text, Some(len))
        }
        _ => text_default(),
    }
}

fn literal(v: &Value) -> SourceField {
    match v {
        Value::Number(n, _) if n.contains(['.', 'e', 'E']) => {
            let digits = n.split(['e', 'E']).next().unwrap_or(n);
            let scale = digits.split_once('.').map(|(_, f)| f.len() as u32).unwrap_or(0);
            decimal(18.max(digits.len() as u32), scale.max(2))
        }
        Value::Number(..) => typed(FieldType::Number, None),
        Value::Boolean(_) => typed(FieldType::Boolean, None),
        Value::SingleQuotedString(s) | Value::NationalStringLiteral(s) | Value::DoubleQuotedString(s) => {
            guess(FieldType::Text, Some((s.chars().count() as u32).max(DEFAULT_TEXT)))
        }
        _ => text_default(),
    }
}

fn func_args(args: &FunctionArguments) -> Vec<&Expr> {
    match args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
                | FunctionArg::Named {
                    arg: FunctionArgExpr::Expr(e),
                    ..
                }
                | FunctionArg::ExprNamed {
                    arg: FunctionArgExpr::Expr(e),
                    ..
                } => Some(e),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn int_literal(e: Option<&&Expr>) -> Option<u32> {
    match e {
        Some(Expr::Value(v)) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A column or alias name that needs no brackets.
fn plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[Name]` when the name needs it (`]` doubled), else the name.
pub(super) fn quote(name: &str) -> String {
    if plain_identifier(name) {
        name.to_string()
    } else {
        format!("[{}]", name.replace(']', "]]"))
    }
}

/// The byte offset of a 1-based line/column location in `sql`.
fn offset(sql: &str, loc: Location) -> Option<usize> {
    if loc.line == 0 || loc.column == 0 {
        return None;
    }
    let mut line = 1;
    let mut column = 1;
    for (i, c) in sql.char_indices() {
        if line == loc.line && column == loc.column {
            return Some(i);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line == loc.line && column == loc.column).then_some(sql.len())
}

impl<'a> Walker<'a> {
    pub(super) fn new(sql: &'a str, catalog: &'a Catalog) -> Self {
        Self {
            sql,
            catalog,
            edits: Vec::new(),
        }
    }

    /// The SQL with the star edits applied.
    pub(super) fn rewritten(mut self) -> String {
        self.edits.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut out = self.sql.to_string();
        for (start, end, text) in self.edits {
            out.replace_range(start..end, &text);
        }
        out
    }

    fn edit(&mut self, span: Span, text: String, table: &str) -> Result<(), SchemaError> {
        let start = offset(self.sql, span.start);
        let end = offset(self.sql, span.end);
        match (start, end) {
            (Some(s), Some(e)) if s < e && self.sql[s..e].trim_end().ends_with('*') => {
                self.edits.push((s, e, text));
                Ok(())
            }
            _ => Err(SchemaError::StarExpansion(table.to_string())),
        }
    }

    pub(super) fn query_columns(
        &mut self,
        query: &Query,
        outer: &Ctes,
        expand: bool,
    ) -> Result<Vec<SourceField>, SchemaError> {
        // Copied only when this query adds CTEs: a copy per query would be
        // quadratic in a long CTE chain.
        let Some(with) = &query.with else {
            return self.set_columns(&query.body, outer, expand);
        };
        let mut ctes = outer.clone();
        for cte in &with.cte_tables {
            let mut cols = self.query_columns(&cte.query, &ctes, expand)?;
            rename(
                &mut cols,
                &cte.alias
                    .columns
                    .iter()
                    .map(|c| c.name.value.clone())
                    .collect::<Vec<_>>(),
            );
            ctes.insert(cte.alias.name.value.to_ascii_lowercase(), cols);
        }
        self.set_columns(&query.body, &ctes, expand)
    }

    fn set_columns(&mut self, body: &SetExpr, ctes: &Ctes, expand: bool) -> Result<Vec<SourceField>, SchemaError> {
        match body {
            SetExpr::Select(select) => self.select_columns(select, ctes, expand),
            SetExpr::Query(q) => self.query_columns(q, ctes, expand),
            SetExpr::SetOperation { left, right, .. } => {
                let mut l = self.set_columns(left, ctes, expand)?;
                let r = self.set_columns(right, ctes, expand)?;
                // A UNION's columns are named by its first branch; types widen.
                for (lc, rc) in l.iter_mut().zip(r) {
                    let name = std::mem::take(&mut lc.name);
                    *lc = SourceField {
                        name,
                        ..common(vec![lc.clone(), rc])
                    };
                }
                Ok(l)
            }
            _ => Err(SchemaError::NotSelect),
        }
    }

    fn sources(&mut self, from: &[TableWithJoins], ctes: &Ctes, expand: bool) -> Result<Vec<Source>, SchemaError> {
        let mut out = Vec::new();
        for twj in from {
            self.add_source(&twj.relation, ctes, expand, &mut out)?;
            for join in &twj.joins {
                self.add_source(&join.relation, ctes, expand, &mut out)?;
            }
        }
        Ok(out)
    }

    fn add_source(
        &mut self,
        factor: &TableFactor,
        ctes: &Ctes,
        expand: bool,
        out: &mut Vec<Source>,
    ) -> Result<(), SchemaError> {
        match factor {
            TableFactor::Table { name, alias, .. } => {
                let written = name.to_string();
                let table: String = written
                    .split('.')
                    .map(|p| p.trim_start_matches('[').trim_end_matches(']'))
                    .collect::<Vec<_>>()
                    .join(".");
                let last = table.rsplit('.').next().unwrap_or(&table).to_string();
                let columns = match ctes.get(&last.to_ascii_lowercase()).filter(|_| !table.contains('.')) {
                    Some(cols) => Some(cols.clone()),
                    None => self.catalog.lookup(&table),
                };
                let (key, qualifier) = match alias {
                    Some(a) => (a.name.value.to_ascii_lowercase(), quote(&a.name.value)),
                    None => (last.to_ascii_lowercase(), written.clone()),
                };
                out.push(Source {
                    key,
                    qualifier,
                    table,
                    columns,
                });
            }
            TableFactor::Derived { subquery, alias, .. } => {
                let mut cols = self.query_columns(subquery, ctes, expand)?;
                let (key, qualifier) = match alias {
                    Some(a) => {
                        rename(
                            &mut cols,
                            &a.columns.iter().map(|c| c.name.value.clone()).collect::<Vec<_>>(),
                        );
                        (a.name.value.to_ascii_lowercase(), quote(&a.name.value))
                    }
                    None => (String::new(), String::new()),
                };
                out.push(Source {
                    key,
                    qualifier,
                    table: "a subquery".into(),
                    columns: Some(cols),
                });
            }
            TableFactor::NestedJoin { table_with_joins, .. } => {
                out.extend(self.sources(std::slice::from_ref(table_with_joins), ctes, expand)?);
            }
            other => out.push(Source {
                key: String::new(),
                qualifier: String::new(),
                table: describe(other),
                columns: None,
            }),
        }
        Ok(())
    }

    fn select_columns(&mut self, select: &Select, ctes: &Ctes, expand: bool) -> Result<Vec<SourceField>, SchemaError> {
        let scope = self.sources(&select.from, ctes, expand)?;
        let mut out: Vec<SourceField> = Vec::new();
        let push_explicit = |out: &mut Vec<SourceField>, field: SourceField| -> Result<(), SchemaError> {
            if out.iter().any(|o| o.name.eq_ignore_ascii_case(&field.name)) {
                return Err(SchemaError::DuplicateColumn(field.name));
            }
            out.push(field);
            Ok(())
        };
        for (i, item) in select.projection.iter().enumerate() {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    let name = match expr {
                        Expr::Identifier(id) => id.value.clone(),
                        Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()).unwrap_or_default(),
                        _ => return Err(SchemaError::Unnamed(i + 1)),
                    };
                    let field = SourceField {
                        name,
                        ..self.expr_type(expr, &scope, ctes)
                    };
                    push_explicit(&mut out, field)?;
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let field = SourceField {
                        name: alias.value.clone(),
                        ..self.expr_type(expr, &scope, ctes)
                    };
                    push_explicit(&mut out, field)?;
                }
                SelectItem::ExprWithAliases { aliases, .. } => {
                    for a in aliases {
                        push_explicit(
                            &mut out,
                            SourceField {
                                name: a.value.clone(),
                                ..text_default()
                            },
                        )?;
                    }
                }
                SelectItem::Wildcard(_) => {
                    let qualify = scope.len() > 1;
                    let mut parts = Vec::new();
                    for source in &scope {
                        let cols = source
                            .columns
                            .clone()
                            .ok_or_else(|| SchemaError::StarExpansion(source.table.clone()))?;
                        self.star_columns(
                            &mut out,
                            &mut parts,
                            &cols,
                            qualify.then_some(source.qualifier.as_str()),
                        );
                    }
                    if scope.is_empty() {
                        return Err(SchemaError::StarExpansion("a query without FROM".into()));
                    }
                    if expand {
                        self.edit(item.span(), parts.join(", "), &scope[0].table)?;
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let SelectItemQualifiedWildcardKind::ObjectName(name) = kind else {
                        return Err(SchemaError::StarExpansion("an expression".into()));
                    };
                    let written = name.to_string();
                    let wanted = written
                        .rsplit('.')
                        .next()
                        .unwrap_or(&written)
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase();
                    let source = scope
                        .iter()
                        .find(|s| s.key == wanted)
                        .ok_or_else(|| SchemaError::StarExpansion(written.clone()))?;
                    let cols = source
                        .columns
                        .clone()
                        .ok_or_else(|| SchemaError::StarExpansion(source.table.clone()))?;
                    let mut parts = Vec::new();
                    self.star_columns(&mut out, &mut parts, &cols, Some(&written));
                    if expand {
                        self.edit(item.span(), parts.join(", "), &source.table)?;
                    }
                }
            }
        }
        for f in &out {
            if f.name.chars().count() > MAX_NAME_CHARS {
                return Err(SchemaError::NameTooLong(f.name.chars().take(40).collect()));
            }
        }
        Ok(out)
    }

    /// Adds a star's columns; a name already taken gets `_<n>`, and the SQL an alias.
    fn star_columns(
        &self,
        out: &mut Vec<SourceField>,
        parts: &mut Vec<String>,
        cols: &[SourceField],
        qualifier: Option<&str>,
    ) {
        for col in cols {
            let column = match qualifier {
                Some(q) => format!("{q}.{}", quote(&col.name)),
                None => quote(&col.name),
            };
            let taken = |name: &str| out.iter().any(|o| o.name.eq_ignore_ascii_case(name));
            if taken(&col.name) {
                let name = (1..)
                    .map(|n| format!("{}_{n}", col.name))
                    .find(|n| !taken(n))
                    .expect("some suffix is free");
                parts.push(format!("{column} AS {}", quote(&name)));
                out.push(SourceField { name, ..col.clone() });
            } else {
                parts.push(column);
                out.push(col.clone());
            }
        }
    }

    fn column(&self, qualifier: Option<&str>, column: &str, scope: &[Source]) -> SourceField {
        let find = |s: &Source| {
            s.columns
                .as_ref()?
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(column))
                .cloned()
        };
        let found = match qualifier {
            Some(q) => {
                let q = q.to_ascii_lowercase();
                scope
                    .iter()
                    .find(|s| s.key == q || normalize_last(&s.table) == q)
                    .and_then(find)
            }
            None => scope.iter().find_map(find),
        };
        found.unwrap_or_else(text_default)
    }

    fn expr_type(&mut self, expr: &Expr, scope: &[Source], ctes: &Ctes) -> SourceField {
        match expr {
            Expr::Identifier(id) => self.column(None, &id.value, scope),
            Expr::CompoundIdentifier(parts) => {
                let column = parts.last().map(|p| p.value.as_str()).unwrap_or("");
                let qualifier = parts.len().checked_sub(2).map(|i| parts[i].value.as_str());
                self.column(qualifier, column, scope)
            }
            Expr::Nested(inner) => self.expr_type(inner, scope, ctes),
            Expr::Value(v) => literal(&v.value),
            Expr::Cast { data_type: dt, .. } => data_type(dt),
            Expr::Convert {
                data_type: Some(dt), ..
            } => data_type(dt),
            Expr::Case {
                conditions,
                else_result,
                ..
            } => {
                let branches: Vec<SourceField> = conditions
                    .iter()
                    .map(|c| &c.result)
                    .chain(else_result.as_deref())
                    .filter(|e| !is_null(e))
                    .map(|e| self.expr_type(e, scope, ctes))
                    .collect();
                common(branches)
            }
            Expr::UnaryOp {
                op: UnaryOperator::Minus | UnaryOperator::Plus,
                expr,
            }
            | Expr::Ceil { expr, .. }
            | Expr::Floor { expr, .. } => self.expr_type(expr, scope, ctes),
            Expr::Substring { substring_for, .. } => match int_literal(substring_for.as_deref().as_ref()) {
                Some(n) => typed(FieldType::Text, Some(n.max(1))),
                None => guess(FieldType::Text, Some(FUNCTION_TEXT)),
            },
            Expr::Trim { expr, .. } => match self.expr_type(expr, scope, ctes) {
                a if a.field_type.is_textual() => SourceField {
                    field_type: FieldType::Text,
                    ..a
                },
                _ => guess(FieldType::Text, Some(FUNCTION_TEXT)),
            },
            Expr::BinaryOp { left, op, right } => {
                let (l, r) = (self.expr_type(left, scope, ctes), self.expr_type(right, scope, ctes));
                match op {
                    BinaryOperator::Plus
                    | BinaryOperator::Minus
                    | BinaryOperator::Multiply
                    | BinaryOperator::Divide
                    | BinaryOperator::Modulo => arithmetic(l, r),
                    BinaryOperator::StringConcat => concat(l, r),
                    _ => text_default(),
                }
            }
            Expr::Subquery(q) => {
                let saved = self.edits.len();
                let cols = self.query_columns(q, ctes, false).ok();
                self.edits.truncate(saved);
                cols.and_then(|c| c.into_iter().next()).unwrap_or_else(text_default)
            }
            Expr::Function(f) => {
                let name = f.name.to_string().to_ascii_uppercase();
                let name = name
                    .rsplit('.')
                    .next()
                    .unwrap_or(&name)
                    .trim_matches(['[', ']'])
                    .to_string();
                let args = func_args(&f.args);
                self.function_type(&name, &args, scope, ctes)
            }
            _ => text_default(),
        }
    }

    fn function_type(&mut self, name: &str, args: &[&Expr], scope: &[Source], ctes: &Ctes) -> SourceField {
        let mut arg = |i: usize| args.get(i).map(|e| self.expr_type(e, scope, ctes));
        match name {
            "COUNT" | "COUNT_BIG" | "LEN" | "CHARINDEX" | "PATINDEX" | "DATALENGTH" | "DAY" | "MONTH" | "YEAR"
            | "DATEPART" | "DATEDIFF" | "DATEDIFF_BIG" | "SIGN" | "ISNUMERIC" | "ROW_NUMBER" | "RANK"
            | "DENSE_RANK" | "NTILE" => typed(FieldType::Number, None),
            "SUM" => match arg(0) {
                Some(a) if a.field_type == FieldType::Decimal => a,
                _ => typed(FieldType::Number, None),
            },
            "AVG" | "STDEV" | "STDEVP" | "VAR" | "VARP" | "SQRT" | "POWER" | "LOG" | "LOG10" | "EXP" | "SQUARE"
            | "PI" | "RAND" => decimal(18, 2),
            "MIN" | "MAX" | "ABS" | "ROUND" | "FLOOR" | "CEILING" | "FIRST_VALUE" | "LAST_VALUE" | "LAG" | "LEAD" => {
                arg(0).unwrap_or_else(text_default)
            }
            "ISNULL" | "COALESCE" | "NULLIF" => {
                let types: Vec<SourceField> = args
                    .iter()
                    .filter(|e| !is_null(e))
                    .map(|e| self.expr_type(e, scope, ctes))
                    .collect();
                if name == "NULLIF" {
                    types.into_iter().next().unwrap_or_else(text_default)
                } else {
                    common(types)
                }
            }
            "IIF" => {
                let types: Vec<SourceField> = args
                    .iter()
                    .skip(1)
                    .filter(|e| !is_null(e))
                    .map(|e| self.expr_type(e, scope, ctes))
                    .collect();
                common(types)
            }
            "GETDATE"
            | "GETUTCDATE"
            | "SYSDATETIME"
            | "SYSUTCDATETIME"
            | "SYSDATETIMEOFFSET"
            | "CURRENT_TIMESTAMP"
            | "DATEADD"
            | "EOMONTH"
            | "DATEFROMPARTS"
            | "DATETIMEFROMPARTS"
            | "DATETIME2FROMPARTS"
            | "SMALLDATETIMEFROMPARTS"
            | "SWITCHOFFSET"
            | "TODATETIMEOFFSET" => typed(FieldType::Date, None),
            "UPPER" | "LOWER" | "TRIM" | "LTRIM" | "RTRIM" | "REVERSE" => match arg(0) {
                Some(a) if a.field_type.is_textual() => SourceField {
                    field_type: FieldType::Text,
                    known: a.known,
                    ..a
                },
                _ => guess(FieldType::Text, Some(FUNCTION_TEXT)),
            },
            "LEFT" | "RIGHT" => match int_literal(args.get(1)) {
                Some(n) => typed(FieldType::Text, Some(n.max(1))),
                None => guess(FieldType::Text, Some(FUNCTION_TEXT)),
            },
            "SUBSTRING" => match int_literal(args.get(2)) {
                Some(n) => typed(FieldType::Text, Some(n.max(1))),
                None => guess(FieldType::Text, Some(FUNCTION_TEXT)),
            },
            "NEWID" => typed(FieldType::Text, Some(36)),
            "TRY_CAST" | "TRY_CONVERT" | "CAST" | "CONVERT" => text_default(),
            _ => guess(FieldType::Text, Some(FUNCTION_TEXT)),
        }
    }
}

/// What to call a FROM source that is neither a table nor a subquery, in a
/// message, without printing it: printing recurses through its expressions,
/// a stack's worth deeper per level than any walk here.
fn describe(factor: &TableFactor) -> String {
    match factor {
        TableFactor::Function { name, .. } => name.to_string(),
        TableFactor::OpenJsonTable { .. } => "OPENJSON".into(),
        TableFactor::Pivot { .. } => "a PIVOT".into(),
        TableFactor::Unpivot { .. } | TableFactor::UnpivotExpr { .. } => "an UNPIVOT".into(),
        _ => "a table expression".into(),
    }
}

fn normalize_last(table: &str) -> String {
    table.rsplit('.').next().unwrap_or(table).to_ascii_lowercase()
}

fn arithmetic(l: SourceField, r: SourceField) -> SourceField {
    use FieldType::*;
    match (l.field_type, r.field_type) {
        (Decimal, Decimal) => decimal(
            l.precision.max(r.precision).unwrap_or(18),
            l.scale.max(r.scale).unwrap_or(2),
        ),
        (Decimal, Number) => l,
        (Number, Decimal) => r,
        (Number, Number) => typed(Number, None),
        (Date, Number) | (Number, Date) => typed(Date, None),
        (a, b) if a.is_textual() || b.is_textual() => concat(l, r),
        _ => text_default(),
    }
}

fn concat(l: SourceField, r: SourceField) -> SourceField {
    let len = |f: &SourceField| f.max_length.unwrap_or(DEFAULT_TEXT);
    guess(FieldType::Text, Some((len(&l) + len(&r)).min(FUNCTION_TEXT)))
}

fn rename(cols: &mut [SourceField], names: &[String]) {
    for (c, n) in cols.iter_mut().zip(names) {
        c.name = n.clone();
    }
}
