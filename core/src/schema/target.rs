//! Checks of a run into an existing Data Extension (run-to-target), before
//! anything is written in MCE.

use super::{FieldType, SourceField, normalize_table, referenced_tables};

/// How a query writes into its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetMode {
    Overwrite,
    Append,
    Update,
}

/// The update type a run-to-target's row names: a mode, or text that is
/// none (kept as written, so that resubmitting the row sends it unchanged
/// and the run fails on it as the first delivery would have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateType {
    Mode(TargetMode),
    Unknown(String),
}

impl UpdateType {
    /// From a row's text.
    pub fn from_stored(text: &str) -> Self {
        match TargetMode::parse(Some(text)) {
            Some(mode) => Self::Mode(mode),
            None => Self::Unknown(text.to_string()),
        }
    }

    /// The text to store or send.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Mode(mode) => mode.as_mce(),
            Self::Unknown(text) => text,
        }
    }

    /// The mode a row's update type asks for: none named is `Overwrite`
    /// (MCE's default); text that is no mode is `None`.
    pub fn mode_of(update_type: Option<&Self>) -> Option<TargetMode> {
        match update_type {
            None => Some(TargetMode::Overwrite),
            Some(Self::Mode(mode)) => Some(*mode),
            Some(Self::Unknown(_)) => None,
        }
    }
}

impl TargetMode {
    /// `Overwrite` (default), `Append` or `Update`, any case.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("overwrite") => Some(Self::Overwrite),
            Some("append") => Some(Self::Append),
            Some("update") => Some(Self::Update),
            _ => None,
        }
    }

    pub fn as_mce(self) -> &'static str {
        match self {
            Self::Overwrite => "Overwrite",
            Self::Append => "Append",
            Self::Update => "Update",
        }
    }
}

/// A field of the target DE as MCE lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetField {
    pub name: String,
    pub field_type: FieldType,
    pub max_length: Option<u32>,
    pub is_primary_key: bool,
    pub is_required: bool,
}

/// Whether a column of this type can be written into this field.
fn compatible(from: &SourceField, to: &TargetField) -> Option<String> {
    use FieldType::*;
    let ok = match (from.field_type, to.field_type) {
        (a, b) if a == b => true,
        (_, Text) => true,
        (Number, Decimal) => true,
        (a, EmailAddress | Phone) if a.is_textual() => true,
        // Only a type we know for sure is a mismatch; a guess is left to MCE.
        _ => !from.known,
    };
    if !ok {
        return Some(format!(
            "Column \"{}\" is {} but target field \"{}\" is {}.",
            from.name,
            from.field_type.as_mce(),
            to.name,
            to.field_type.as_mce()
        ));
    }
    match (from.known, from.max_length, to.max_length) {
        (true, Some(have), Some(room)) if from.field_type.is_textual() && to.field_type.is_textual() && have > room => {
            Some(format!(
                "Column \"{}\" holds up to {have} characters but target field \"{}\" only {room}.",
                from.name, to.name
            ))
        }
        _ => None,
    }
}

/// Every reason the query cannot run into this target, as client-safe
/// lines (the first says which DE); empty when it can.
pub fn check_target(
    sql: &str,
    output: &[SourceField],
    target_name: &str,
    target_key: &str,
    fields: &[TargetField],
    mode: TargetMode,
) -> Vec<String> {
    if mode == TargetMode::Overwrite {
        match referenced_tables(sql) {
            Err(_) => return vec![
                "Cannot safely verify overwrite behavior because the query could not be parsed. Use \"Append\" or \"Update\" data action, or simplify the query.".to_string(),
            ],
            Ok(tables) => {
                let (name, key) = (normalize_table(target_name), normalize_table(target_key));
                if tables.iter().map(|t| normalize_table(t)).any(|t| t == name || t == key) {
                    return vec![format!(
                        "Cannot overwrite Data Extension \"{target_name}\" because the query reads from it. Overwrite clears the target before the query runs, resulting in 0 rows. Use \"Append\" or \"Update\" data action instead, or choose a different target."
                    )];
                }
            }
        }
    }
    if mode == TargetMode::Update && !fields.iter().any(|f| f.is_primary_key) {
        return vec!["Update mode requires the target Data Extension to have a Primary Key field.".to_string()];
    }
    let mut problems = Vec::new();
    if !fields.is_empty() {
        for col in output {
            match fields.iter().find(|f| f.name.eq_ignore_ascii_case(&col.name)) {
                None => problems.push(format!("Target DE missing field \"{}\".", col.name)),
                Some(field) => problems.extend(compatible(col, field)),
            }
        }
        for field in fields.iter().filter(|f| f.is_required || f.is_primary_key) {
            if !output.iter().any(|c| c.name.eq_ignore_ascii_case(&field.name)) {
                problems.push(format!("Required target field \"{}\" is not selected.", field.name));
            }
        }
    }
    if !problems.is_empty() {
        problems.insert(
            0,
            format!("Query output does not match target Data Extension \"{target_name}\"."),
        );
    }
    problems
}
