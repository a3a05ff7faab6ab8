//! SOAP request bodies and response readers for the operations the service
//! uses (reference/MCE-PROTOCOL.md section 3). Pure: strings in, data out.

use super::xml::{Element, escape};
use shell_query_core::schema::{DeField, FieldType};

pub(crate) const PARTNER_NS: &str = "http://exacttarget.com/wsdl/partnerAPI";

/// The SOAPAction header values MCE expects: bare verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Retrieve,
    Create,
    Delete,
    Perform,
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verb::Retrieve => "Retrieve",
            Verb::Create => "Create",
            Verb::Delete => "Delete",
            Verb::Perform => "Perform",
        }
    }
}

/// Wraps an operation body in the envelope with the OAuth token header.
pub(crate) fn envelope(access_token: &str, body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">"#,
            r#"<soap:Header><fueloauth xmlns="http://exacttarget.com">{}</fueloauth></soap:Header>"#,
            r#"<soap:Body>{}</soap:Body></soap:Envelope>"#
        ),
        escape(access_token),
        body
    )
}

fn simple_filter(tag: &str, property: &str, operator: &str, value: &str) -> String {
    format!(
        r#"<{tag} xsi:type="SimpleFilterPart"><Property>{}</Property><SimpleOperator>{}</SimpleOperator><Value>{}</Value></{tag}>"#,
        escape(property),
        operator,
        escape(value)
    )
}

fn retrieve(object_type: &str, properties: &[&str], filter: &str) -> String {
    let props: String = properties
        .iter()
        .map(|p| format!("<Properties>{p}</Properties>"))
        .collect();
    format!(
        r#"<RetrieveRequestMsg xmlns="{PARTNER_NS}"><RetrieveRequest><ObjectType>{object_type}</ObjectType>{props}{filter}</RetrieveRequest></RetrieveRequestMsg>"#
    )
}

pub(crate) fn retrieve_async_status(task_id: &str) -> String {
    retrieve(
        "AsyncActivityStatus",
        &["Status", "ErrorMsg", "CompletedDate"],
        &simple_filter("Filter", "TaskID", "equals", task_id),
    )
}

/// The status of several tasks in one call: a `TaskID` `IN` filter, with
/// `TaskID` among the properties so each result names its task.
pub(crate) fn retrieve_async_statuses(task_ids: &[&str]) -> String {
    let values: String = task_ids
        .iter()
        .map(|id| format!("<Value>{}</Value>", escape(id)))
        .collect();
    retrieve(
        "AsyncActivityStatus",
        &["TaskID", "Status", "ErrorMsg", "CompletedDate"],
        &format!(
            r#"<Filter xsi:type="SimpleFilterPart"><Property>TaskID</Property><SimpleOperator>IN</SimpleOperator>{values}</Filter>"#
        ),
    )
}

/// Folders by name, optionally narrowed to a content type.
pub(crate) fn retrieve_folder(name: &str, content_type: Option<&str>) -> String {
    let filter = match content_type {
        None => simple_filter("Filter", "Name", "equals", name),
        Some(ct) => format!(
            r#"<Filter xsi:type="ComplexFilterPart">{}<LogicalOperator>AND</LogicalOperator>{}</Filter>"#,
            simple_filter("LeftOperand", "Name", "equals", name),
            simple_filter("RightOperand", "ContentType", "equals", ct)
        ),
    };
    retrieve("DataFolder", &["ID", "Name", "ParentFolder.ID", "ContentType"], &filter)
}

pub(crate) fn create_folder(name: &str, parent_id: i64, description: &str) -> String {
    format!(
        r#"<CreateRequest xmlns="{PARTNER_NS}"><Objects xsi:type="DataFolder"><Name>{n}</Name><CustomerKey>{n}_{parent_id}</CustomerKey><Description>{}</Description><ContentType>dataextension</ContentType><ParentFolder><ID>{parent_id}</ID></ParentFolder></Objects></CreateRequest>"#,
        escape(description),
        n = escape(name),
    )
}

pub(crate) fn delete_data_extension(customer_key: &str) -> String {
    format!(
        r#"<DeleteRequest xmlns="{PARTNER_NS}"><Objects xsi:type="DataExtension"><CustomerKey>{}</CustomerKey></Objects></DeleteRequest>"#,
        escape(customer_key)
    )
}

fn field_xml(field: &DeField) -> String {
    let mut out = format!(
        r#"<Field xsi:type="DataExtensionField"><Name>{}</Name><FieldType>{}</FieldType>"#,
        escape(&field.name),
        field.field_type.as_mce()
    );
    match field.field_type {
        FieldType::Text | FieldType::EmailAddress | FieldType::Phone => {
            if let Some(len) = field.max_length {
                out.push_str(&format!("<MaxLength>{len}</MaxLength>"));
            }
        }
        FieldType::Decimal => {
            out.push_str(&format!(
                "<Scale>{}</Scale><Precision>{}</Precision>",
                field.scale.unwrap_or(2),
                field.precision.unwrap_or(18)
            ));
        }
        FieldType::Number | FieldType::Date | FieldType::Boolean => {}
    }
    out.push_str("<IsPrimaryKey>false</IsPrimaryKey><IsRequired>false</IsRequired></Field>");
    out
}

/// The temp results DE: one-day retention, no primary key.
pub(crate) fn create_data_extension(name: &str, customer_key: &str, folder_id: i64, fields: &[DeField]) -> String {
    let fields: String = fields.iter().map(field_xml).collect();
    format!(
        concat!(
            r#"<CreateRequest xmlns="{ns}"><Objects xsi:type="DataExtension"><Name>{name}</Name><CustomerKey>{key}</CustomerKey>"#,
            r#"<CategoryID>{folder}</CategoryID><IsSendable>false</IsSendable>"#,
            r#"<DataRetentionPeriodLength>1</DataRetentionPeriodLength><DataRetentionPeriod>Days</DataRetentionPeriod>"#,
            r#"<RowBasedRetention>false</RowBasedRetention><ResetRetentionPeriodOnImport>false</ResetRetentionPeriodOnImport>"#,
            r#"<DeleteAtEndOfRetentionPeriod>true</DeleteAtEndOfRetentionPeriod><Fields>{fields}</Fields></Objects></CreateRequest>"#
        ),
        ns = PARTNER_NS,
        name = escape(name),
        key = escape(customer_key),
        folder = folder_id,
        fields = fields,
    )
}

/// A DataExtension by `Name` or `CustomerKey`.
pub(crate) fn retrieve_data_extension(property: &str, value: &str) -> String {
    retrieve(
        "DataExtension",
        &["ObjectID", "CustomerKey", "Name"],
        &simple_filter("Filter", property, "equals", value),
    )
}

/// The fields of the DataExtension with this CustomerKey.
pub(crate) fn retrieve_data_extension_fields(customer_key: &str) -> String {
    retrieve(
        "DataExtensionField",
        &["Name", "FieldType", "MaxLength", "IsPrimaryKey", "IsRequired"],
        &simple_filter("Filter", "DataExtension.CustomerKey", "equals", customer_key),
    )
}

/// QueryDefinition by CustomerKey. `ID` is never requested: MCE rejects it.
pub(crate) fn retrieve_query_definition(customer_key: &str) -> String {
    retrieve(
        "QueryDefinition",
        &["ObjectID", "CustomerKey", "Name"],
        &simple_filter("Filter", "CustomerKey", "equals", customer_key),
    )
}

/// What a QueryDefinition writes into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeTarget {
    pub object_id: String,
    pub customer_key: String,
    pub name: String,
}

pub(crate) struct QueryDefinitionSpec<'a> {
    pub key: &'a str,
    pub query_text: &'a str,
    pub target: &'a DeTarget,
    pub update_type: &'a str,
    /// Omitted when not positive: MCE has no folder 0.
    pub category_id: Option<i64>,
}

pub(crate) fn create_query_definition(spec: &QueryDefinitionSpec<'_>) -> String {
    let category = spec
        .category_id
        .filter(|c| *c > 0)
        .map(|c| format!("<CategoryID>{c}</CategoryID>"))
        .unwrap_or_default();
    format!(
        concat!(
            r#"<CreateRequest xmlns="{ns}"><Objects xsi:type="QueryDefinition"><Name>{key}</Name><CustomerKey>{key}</CustomerKey>"#,
            r#"<Description>Query++ execution</Description><QueryText>{text}</QueryText><TargetType>DE</TargetType>"#,
            r#"<DataExtensionTarget><ObjectID>{oid}</ObjectID><CustomerKey>{tkey}</CustomerKey><Name>{tname}</Name></DataExtensionTarget>"#,
            r#"<TargetUpdateType>{update}</TargetUpdateType>{category}</Objects></CreateRequest>"#
        ),
        ns = PARTNER_NS,
        key = escape(spec.key),
        text = escape(spec.query_text),
        oid = escape(&spec.target.object_id),
        tkey = escape(&spec.target.customer_key),
        tname = escape(&spec.target.name),
        update = escape(spec.update_type),
        category = category,
    )
}

/// QueryDefinitions in a folder created before a time (the sweeper).
pub(crate) fn retrieve_query_definitions_in_folder(category_id: i64, created_before: &str) -> String {
    let filter = format!(
        r#"<Filter xsi:type="ComplexFilterPart">{}<LogicalOperator>AND</LogicalOperator>{}</Filter>"#,
        simple_filter("LeftOperand", "CategoryID", "equals", &category_id.to_string()),
        simple_filter("RightOperand", "CreatedDate", "lessThan", created_before)
    );
    retrieve(
        "QueryDefinition",
        &["ObjectID", "CustomerKey", "Name", "CategoryID"],
        &filter,
    )
}

pub(crate) fn delete_query_definition(object_id: &str) -> String {
    format!(
        r#"<DeleteRequest xmlns="{PARTNER_NS}"><Objects xsi:type="QueryDefinition"><ObjectID>{}</ObjectID></Objects></DeleteRequest>"#,
        escape(object_id)
    )
}

pub fn perform_start(object_id: &str) -> String {
    format!(
        r#"<PerformRequestMsg xmlns="{PARTNER_NS}"><Action>Start</Action><Definitions><Definition xsi:type="QueryDefinition"><ObjectID>{}</ObjectID></Definition></Definitions></PerformRequestMsg>"#,
        escape(object_id)
    )
}

// ---- responses ----

/// Why a response could not be used; the client turns it into an `MceError`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// A SOAP Fault other than "Login Failed".
    Fault { code: String, message: String },
    /// The operation answered with a status other than OK.
    Status { status: String, message: String },
    /// The body lacks what the operation must return.
    Shape(String),
}

/// A SOAP Fault in the body, if any.
pub(crate) fn fault(root: &Element) -> Option<(String, String)> {
    let f = root.path(&["Body", "Fault"])?;
    Some((
        f.text_at(&["faultcode"]).unwrap_or("").to_string(),
        f.text_at(&["faultstring"]).unwrap_or("").to_string(),
    ))
}

/// The fault MCE sends for an expired or invalid token.
pub(crate) fn is_login_failed(root: &Element) -> bool {
    fault(root).is_some_and(|(code, message)| {
        code.to_ascii_lowercase().contains("security") && message.to_ascii_lowercase().contains("login failed")
    })
}

fn body_message<'a>(root: &'a Element, name: &str) -> Result<&'a Element, ReadError> {
    if let Some((code, message)) = fault(root) {
        return Err(ReadError::Fault { code, message });
    }
    root.path(&["Body", name])
        .ok_or_else(|| ReadError::Shape(format!("no {name} in the SOAP body")))
}

/// A Retrieve answer: its status, continuation id and results.
#[derive(Debug)]
pub(crate) struct Retrieved<'a> {
    pub overall_status: String,
    pub request_id: Option<String>,
    pub results: Vec<&'a Element>,
}

impl Retrieved<'_> {
    pub(crate) fn more_data(&self) -> bool {
        self.overall_status.eq_ignore_ascii_case("MoreDataAvailable")
    }
}

/// Reads a Retrieve answer. `OK` and `MoreDataAvailable` succeed; a bare
/// `Error` with no results is "not found" (MCE answers so for some unknown
/// keys); any other status is an error with its text.
pub(crate) fn read_retrieve(root: &Element) -> Result<Retrieved<'_>, ReadError> {
    let msg = body_message(root, "RetrieveResponseMsg")?;
    let overall_status = msg.text_at(&["OverallStatus"]).unwrap_or("").to_string();
    let results: Vec<&Element> = msg.children("Results").collect();
    let ok = overall_status.eq_ignore_ascii_case("OK") || overall_status.eq_ignore_ascii_case("MoreDataAvailable");
    // A bare `Error` with no results is how MCE says "not found" for some keys.
    let not_found = overall_status.eq_ignore_ascii_case("Error") && results.is_empty();
    if !(ok || not_found) {
        return Err(ReadError::Status {
            status: overall_status,
            message: msg.text_at(&["OverallStatusMessage"]).unwrap_or("").to_string(),
        });
    }
    Ok(Retrieved {
        request_id: msg.non_empty_at(&["RequestID"]).map(str::to_string),
        overall_status,
        results,
    })
}

pub(crate) fn continue_retrieve(request_id: &str) -> String {
    format!(
        r#"<RetrieveRequestMsg xmlns="{PARTNER_NS}"><ContinueRequest>{}</ContinueRequest></RetrieveRequestMsg>"#,
        escape(request_id)
    )
}

/// The first `Results` of a Create or Delete answer, checked for `StatusCode OK`.
fn status_result<'a>(root: &'a Element, message: &str) -> Result<&'a Element, ReadError> {
    let msg = body_message(root, message)?;
    let result = msg
        .child("Results")
        .ok_or_else(|| ReadError::Shape(format!("no Results in {message}")))?;
    let code = result.text_at(&["StatusCode"]).unwrap_or("");
    if !code.eq_ignore_ascii_case("OK") {
        return Err(ReadError::Status {
            status: if code.is_empty() {
                "NoResponse".into()
            } else {
                code.to_string()
            },
            message: result.text_at(&["StatusMessage"]).unwrap_or("").to_string(),
        });
    }
    Ok(result)
}

/// Create answer → `NewObjectID` (QueryDefinition, DataExtension; `NewID` is unreliable there).
pub(crate) fn read_create_object_id(root: &Element) -> Result<String, ReadError> {
    let result = status_result(root, "CreateResponse")?;
    result
        .non_empty_at(&["NewObjectID"])
        .map(str::to_string)
        .ok_or_else(|| ReadError::Shape("no NewObjectID".into()))
}

/// Create answer → `NewID` (DataFolder; a folder id must be positive).
pub(crate) fn read_create_new_id(root: &Element) -> Result<i64, ReadError> {
    let result = status_result(root, "CreateResponse")?;
    result
        .text_at(&["NewID"])
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| ReadError::Shape("no usable NewID".into()))
}

pub(crate) fn read_delete(root: &Element) -> Result<(), ReadError> {
    status_result(root, "DeleteResponse").map(|_| ())
}

/// Perform answer → TaskID (`Result/TaskID`, else `Result/Task/ID`).
pub(crate) fn read_perform(root: &Element) -> Result<String, ReadError> {
    let msg = body_message(root, "PerformResponseMsg")?;
    let result = msg
        .path(&["Results", "Result"])
        .ok_or_else(|| ReadError::Shape("no Results/Result".into()))?;
    let ok = |path: &[&str]| result.text_at(path).is_some_and(|s| s.eq_ignore_ascii_case("OK"));
    if !ok(&["StatusCode"]) && !ok(&["Task", "StatusCode"]) {
        return Err(ReadError::Status {
            status: result.text_at(&["StatusCode"]).unwrap_or("Unknown").to_string(),
            message: result
                .non_empty_at(&["StatusMessage"])
                .or(result.non_empty_at(&["Task", "StatusMessage"]))
                .unwrap_or("")
                .to_string(),
        });
    }
    result
        .non_empty_at(&["TaskID"])
        .or(result.non_empty_at(&["Task", "ID"]))
        .map(str::to_string)
        .ok_or_else(|| ReadError::Shape("no TaskID".into()))
}

/// A DataExtension's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataExtensionInfo {
    pub object_id: String,
    pub customer_key: String,
    pub name: String,
}

pub(crate) fn read_data_extension(root: &Element) -> Result<Option<DataExtensionInfo>, ReadError> {
    let retrieved = read_retrieve(root)?;
    Ok(retrieved.results.first().map(|r| DataExtensionInfo {
        object_id: r.text_at(&["ObjectID"]).unwrap_or("").to_string(),
        customer_key: r.text_at(&["CustomerKey"]).unwrap_or("").to_string(),
        name: r.text_at(&["Name"]).unwrap_or("").to_string(),
    }))
}

/// A field as MCE lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    pub name: String,
    /// As MCE writes it; `Text` when absent.
    pub field_type: String,
    pub max_length: Option<u32>,
    pub is_primary_key: bool,
    pub is_required: bool,
}

pub(crate) fn read_fields(root: &Element) -> Result<Vec<FieldInfo>, ReadError> {
    let retrieved = read_retrieve(root)?;
    Ok(retrieved
        .results
        .iter()
        .filter_map(|r| {
            let name = r.non_empty_at(&["Name"])?.to_string();
            Some(FieldInfo {
                name,
                field_type: r.non_empty_at(&["FieldType"]).unwrap_or("Text").to_string(),
                max_length: r.text_at(&["MaxLength"]).and_then(|m| m.parse().ok()),
                is_primary_key: r.text_at(&["IsPrimaryKey"]) == Some("true"),
                is_required: r.text_at(&["IsRequired"]) == Some("true"),
            })
        })
        .collect())
}

/// What MCE says of a started query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AsyncStatus {
    /// As sent (not normalised).
    pub status: Option<String>,
    pub error_msg: Option<String>,
    pub completed_date: Option<String>,
}

/// AsyncActivityStatus answer: properties as a list or a single one, or
/// `Status`/`ErrorMsg` as direct children. A missing `Results` is an empty
/// status (the task is not known yet).
pub(crate) fn read_async_status(root: &Element) -> Result<AsyncStatus, ReadError> {
    let retrieved = read_retrieve(root)?;
    Ok(retrieved.results.first().map(|r| status_of(r).1).unwrap_or_default())
}

/// The statuses of an `IN` retrieve, by the TaskID each result names; a
/// result without a TaskID cannot be matched and is left out.
pub(crate) fn read_async_statuses(root: &Element) -> Result<std::collections::HashMap<String, AsyncStatus>, ReadError> {
    let retrieved = read_retrieve(root)?;
    Ok(retrieved
        .results
        .iter()
        .filter_map(|r| {
            let (task, status) = status_of(r);
            task.map(|t| (t, status))
        })
        .collect())
}

/// One AsyncActivityStatus result: its TaskID (when it names one) and status.
fn status_of(result: &Element) -> (Option<String>, AsyncStatus) {
    let mut out = AsyncStatus::default();
    let mut task = None;
    if let Some(props) = result.child("Properties") {
        for prop in props.children("Property") {
            let value = prop.text_at(&["Value"]).filter(|v| !v.is_empty()).map(str::to_string);
            match prop.text_at(&["Name"]) {
                Some("Status") => out.status = value,
                Some("ErrorMsg") => out.error_msg = value,
                Some("CompletedDate") => out.completed_date = value,
                Some("TaskID") => task = value,
                _ => {}
            }
        }
    }
    out.status = out
        .status
        .or_else(|| result.non_empty_at(&["Status"]).map(str::to_string));
    out.error_msg = out
        .error_msg
        .or_else(|| result.non_empty_at(&["ErrorMsg"]).map(str::to_string));
    out.completed_date = out
        .completed_date
        .or_else(|| result.non_empty_at(&["CompletedDate"]).map(str::to_string));
    let task = task.or_else(|| result.non_empty_at(&["TaskID"]).map(str::to_string));
    (task, out)
}

#[cfg(test)]
mod tests;
