//! The SOAP endpoint: routes on the body element and object type, answers
//! in MCE's envelope shape (WS-Addressing header, default namespace on the
//! message, `xsi:type` on results, nil `PartnerKey`).

use std::time::Instant;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mce_xml::{Element, escape, parse};

use crate::Shared;
use crate::state::{DataExtension, Folder, PropertyShape, QueryDefinition, State, Task};

const NS: &str = "http://exacttarget.com/wsdl/partnerAPI";

fn envelope(action: &str, body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" "#,
            r#"xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" "#,
            r#"xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">"#,
            r#"<soap:Header><wsa:Action>{action}Response</wsa:Action><wsa:MessageID>urn:uuid:{id}</wsa:MessageID>"#,
            r#"<wsa:RelatesTo>urn:uuid:{rel}</wsa:RelatesTo><wsa:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To>"#,
            r#"<wsse:Security><wsu:Timestamp wsu:Id="Timestamp-{id}"><wsu:Created>{now}</wsu:Created><wsu:Expires>{now}</wsu:Expires></wsu:Timestamp></wsse:Security>"#,
            r#"</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"#
        ),
        action = action,
        id = uuid::Uuid::new_v4(),
        rel = uuid::Uuid::new_v4(),
        now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        body = body
    )
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "text/xml; charset=utf-8")], body).into_response()
}

fn fault(code: &str, message: &str) -> String {
    format!(
        r#"<soap:Fault><faultcode xmlns:q0="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">{code}</faultcode><faultstring>{}</faultstring></soap:Fault>"#,
        escape(message)
    )
}

fn retrieve_response(status: &str, results: &str) -> String {
    format!(
        r#"<RetrieveResponseMsg xmlns="{NS}"><OverallStatus>{status}</OverallStatus><RequestID>{}</RequestID>{results}</RetrieveResponseMsg>"#,
        uuid::Uuid::new_v4()
    )
}

fn create_response(ok: Result<(i64, String), String>) -> String {
    let result = match ok {
        Ok((new_id, object_id)) => format!(
            "<StatusCode>OK</StatusCode><StatusMessage>Created</StatusMessage><OrdinalID>0</OrdinalID><NewID>{new_id}</NewID><NewObjectID>{object_id}</NewObjectID>"
        ),
        Err(message) => format!(
            "<StatusCode>Error</StatusCode><StatusMessage>{}</StatusMessage><OrdinalID>0</OrdinalID><ErrorCode>310007</ErrorCode><NewID>0</NewID>",
            escape(&message)
        ),
    };
    format!(
        r#"<CreateResponse xmlns="{NS}"><Results xsi:type="CreateResult">{result}</Results><RequestID>{}</RequestID><OverallStatus>{}</OverallStatus></CreateResponse>"#,
        uuid::Uuid::new_v4(),
        if result.contains(">OK<") { "OK" } else { "Error" }
    )
}

fn delete_response(ok: Result<(), String>) -> String {
    let (code, message) = match ok {
        Ok(()) => ("OK".to_string(), "Deleted".to_string()),
        Err(m) => ("Error".to_string(), m),
    };
    format!(
        r#"<DeleteResponse xmlns="{NS}"><Results xsi:type="DeleteResult"><StatusCode>{code}</StatusCode><StatusMessage>{}</StatusMessage><OrdinalID>0</OrdinalID></Results><RequestID>{}</RequestID><OverallStatus>{code}</OverallStatus></DeleteResponse>"#,
        escape(&message),
        uuid::Uuid::new_v4()
    )
}

/// `(property, value)` pairs of a filter, simple or AND-ed.
fn filter_terms(filter: Option<&Element>) -> Vec<(String, String)> {
    let Some(f) = filter else { return vec![] };
    if let (Some(left), Some(right)) = (f.child("LeftOperand"), f.child("RightOperand")) {
        let mut terms = filter_terms(Some(left));
        terms.extend(filter_terms(Some(right)));
        return terms;
    }
    match (f.text_at(&["Property"]), f.text_at(&["Value"])) {
        (Some(p), Some(v)) => vec![(p.to_string(), v.to_string())],
        _ => vec![],
    }
}

fn term<'a>(terms: &'a [(String, String)], name: &str) -> Option<&'a str> {
    terms.iter().find(|(p, _)| p == name).map(|(_, v)| v.as_str())
}

pub async fn handle(AxState(shared): AxState<Shared>, headers: HeaderMap, body: String) -> Response {
    let Ok(root) = parse(&body) else {
        return xml(
            StatusCode::BAD_REQUEST,
            envelope("Fault", &fault("soap:Client", "Malformed request")),
        );
    };
    let Some(request) = root.child("Body").and_then(|b| b.children.first()) else {
        return xml(
            StatusCode::BAD_REQUEST,
            envelope("Fault", &fault("soap:Client", "Empty body")),
        );
    };
    let verb = headers
        .get("soapaction")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let object_type = match request.name.as_str() {
        "RetrieveRequestMsg" => request
            .text_at(&["RetrieveRequest", "ObjectType"])
            .map(str::to_string)
            .unwrap_or_else(|| "Continue".into()),
        "CreateRequest" | "DeleteRequest" => request
            .child("Objects")
            .and_then(|o| o.attr("type"))
            .unwrap_or("")
            .to_string(),
        "PerformRequestMsg" => "QueryDefinition".into(),
        _ => String::new(),
    };
    let mut action = format!("soap:{verb}:{object_type}");
    // A TaskID IN filter is one request about several tasks: recorded as
    // the request (`…:IN-request`, detail: how many) and one `…:IN` per task.
    let in_values: Vec<String> = request
        .path(&["RetrieveRequest", "Filter"])
        .filter(|f| {
            f.text_at(&["SimpleOperator"])
                .is_some_and(|o| o.eq_ignore_ascii_case("IN"))
        })
        .map(|f| f.children("Value").map(|v| v.text.clone()).collect())
        .unwrap_or_default();
    if !in_values.is_empty() {
        action.push_str(":IN-request");
    }
    let token = root.text_at(&["Header", "fueloauth"]).unwrap_or("").to_string();

    let detail = request
        .path(&["RetrieveRequest", "Filter", "Value"])
        .or_else(|| request.path(&["Objects", "CustomerKey"]))
        .or_else(|| request.path(&["Objects", "ObjectID"]))
        .or_else(|| request.path(&["Definitions", "Definition", "ObjectID"]))
        .map(|e| e.text.clone())
        .unwrap_or_default();
    let (due, pace) = {
        let mut state = shared.lock().expect("simulator state lock");
        if in_values.is_empty() {
            state.record(&action, &detail);
        } else {
            state.record(&action, &in_values.len().to_string());
            let per_task = action.trim_end_matches("-request").to_string();
            for task in &in_values {
                state.record(&per_task, task);
            }
        }
        if !state.token_valid(&token) {
            return xml(StatusCode::OK, envelope("Fault", &fault("q0:Security", "Login Failed")));
        }
        let due = state.take_fault(&action);
        let pace = state.admit(&token);
        if let Some(latency) = pace {
            state.note_latency(1 + in_values.len(), latency);
        }
        (due, pace)
    };
    let Some(latency) = pace else {
        return crate::state::too_many_requests();
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let slow = match due {
        Some(due) if due.status == 0 => Some(due.delay),
        Some(due) => {
            // A "Login Failed" fault can come with any HTTP status (MCE-PROTOCOL.md 9).
            let body = if due.login_failed {
                envelope("Fault", &fault("q0:Security", "Login Failed"))
            } else {
                envelope("Fault", &fault("soap:Server", "Internal server error"))
            };
            return due.respond(xml(StatusCode::OK, body)).await;
        }
        None => None,
    };
    let response = answer(&shared, request, &verb, &object_type);
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    xml(StatusCode::OK, response)
}

/// Carries out one SOAP request on the account.
fn answer(shared: &crate::Shared, request: &Element, verb: &str, object_type: &str) -> String {
    let mut state = shared.lock().expect("simulator state lock");
    state.advance();
    let response = match (request.name.as_str(), object_type) {
        ("RetrieveRequestMsg", "AsyncActivityStatus") => retrieve_status(&state, request),
        ("RetrieveRequestMsg", "DataFolder") => retrieve_folders(&state, request),
        ("RetrieveRequestMsg", "QueryDefinition") => retrieve_query_definitions(&mut state, request),
        ("RetrieveRequestMsg", "DataExtension") => retrieve_data_extensions(&state, request),
        ("RetrieveRequestMsg", "Continue") => {
            let id = request.text_at(&["ContinueRequest"]).unwrap_or("").to_string();
            match state.continuations.remove(&id) {
                Some(rest) => paged(&mut state, rest),
                None => retrieve_response("Error: unknown ContinueRequest", ""),
            }
        }
        ("RetrieveRequestMsg", "DataExtensionField") => retrieve_fields(&state, request),
        ("CreateRequest", "DataFolder") => create_folder(&mut state, request),
        ("CreateRequest", "DataExtension") => create_data_extension(&mut state, request),
        ("CreateRequest", "QueryDefinition") => create_query_definition(&mut state, request),
        ("DeleteRequest", "DataExtension") => {
            let key = request.text_at(&["Objects", "CustomerKey"]).unwrap_or("");
            let found = state.data_extensions.remove(key).is_some();
            delete_response(if found {
                Ok(())
            } else {
                Err("Data Extension not found".into())
            })
        }
        ("DeleteRequest", "QueryDefinition") => {
            let id = request.text_at(&["Objects", "ObjectID"]).unwrap_or("");
            let found = state.query_definitions.remove(id).is_some();
            delete_response(if found {
                Ok(())
            } else {
                Err("QueryDefinition not found".into())
            })
        }
        ("PerformRequestMsg", _) => perform(&mut state, request),
        _ => envelope(
            "Fault",
            &fault("soap:Client", &format!("Invalid object type: {object_type}")),
        ),
    };
    if response.starts_with("<?xml") {
        response
    } else {
        envelope(verb, &response)
    }
}

fn retrieve_status(state: &State, request: &Element) -> String {
    let filter = request.path(&["RetrieveRequest", "Filter"]);
    if let Some(f) = filter.filter(|f| {
        f.text_at(&["SimpleOperator"])
            .is_some_and(|o| o.eq_ignore_ascii_case("IN"))
    }) {
        // MCE's IN: every Value is a TaskID; each known task is one Results
        // naming its TaskID (asked for among the properties).
        if state.load.refuse_in_filter {
            return retrieve_response("Error: The IN operator is not supported for this property", "");
        }
        let ids: Vec<&str> = f.children("Value").map(|v| v.text.as_str()).collect();
        let kept = ids.len().saturating_sub(state.load.in_filter_leaves_out);
        let results: String = ids[..kept]
            .iter()
            .filter_map(|id| state.tasks.get(*id).map(|task| status_result(state, task, Some(id))))
            .collect();
        return retrieve_response("OK", &results);
    }
    let terms = filter_terms(filter);
    let Some(task) = term(&terms, "TaskID").and_then(|id| state.tasks.get(id)) else {
        return retrieve_response("OK", "");
    };
    retrieve_response("OK", &status_result(state, task, None))
}

/// One task's AsyncActivityStatus result, in the task's property shape;
/// `task_id` adds a TaskID property (an IN answer).
fn status_result(state: &State, task: &crate::state::Task, task_id: Option<&str>) -> String {
    let (status, error, completed) = state.task_status(task);
    let values: Vec<(&str, String)> = [
        ("TaskID", task_id.map(str::to_string)),
        ("Status", Some(status)),
        ("ErrorMsg", error),
        ("CompletedDate", completed),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect();
    let inner = match task.scenario.property_shape {
        // A single property cannot carry a TaskID as well: a list then.
        PropertyShape::List | PropertyShape::Single if task_id.is_some() => list(&values),
        PropertyShape::List => list(&values),
        PropertyShape::Single => list(&values[..1]),
        PropertyShape::Direct => values
            .iter()
            .map(|(n, v)| format!("<{n}>{}</{n}>", escape(v)))
            .collect(),
    };
    format!(
        r#"<Results xsi:type="AsyncActivityStatus"><PartnerKey xsi:nil="true"/><ObjectID>{}</ObjectID>{inner}</Results>"#,
        uuid::Uuid::new_v4()
    )
}

fn list(values: &[(&str, String)]) -> String {
    let props: String = values
        .iter()
        .map(|(n, v)| format!("<Property><Name>{n}</Name><Value>{}</Value></Property>", escape(v)))
        .collect();
    format!("<Properties>{props}</Properties>")
}

fn retrieve_folders(state: &State, request: &Element) -> String {
    let terms = filter_terms(request.path(&["RetrieveRequest", "Filter"]));
    let results: String = state
        .folders
        .iter()
        .filter(|f| term(&terms, "Name").is_none_or(|n| n == f.name))
        .filter(|f| term(&terms, "ContentType").is_none_or(|c| c.eq_ignore_ascii_case(&f.content_type)))
        .map(|f| {
            format!(
                r#"<Results xsi:type="DataFolder"><PartnerKey xsi:nil="true"/><ID>{}</ID><Name>{}</Name><ParentFolder><ID>{}</ID></ParentFolder><ContentType>{}</ContentType></Results>"#,
                f.id,
                escape(&f.name),
                f.parent_id,
                f.content_type
            )
        })
        .collect();
    retrieve_response("OK", &results)
}

/// Sends at most a page of results; the rest waits for a `ContinueRequest`.
fn paged(state: &mut State, mut results: Vec<String>) -> String {
    let size = state.config.retrieve_page_size.max(1);
    if results.len() <= size {
        return retrieve_response("OK", &results.concat());
    }
    let rest = results.split_off(size);
    let id = uuid::Uuid::new_v4().to_string();
    state.continuations.insert(id.clone(), rest);
    format!(
        r#"<RetrieveResponseMsg xmlns="{NS}"><OverallStatus>MoreDataAvailable</OverallStatus><RequestID>{id}</RequestID>{}</RetrieveResponseMsg>"#,
        results.concat()
    )
}

fn retrieve_query_definitions(state: &mut State, request: &Element) -> String {
    if request
        .children("RetrieveRequest")
        .flat_map(|r| r.children("Properties"))
        .any(|p| p.text == "ID")
    {
        return retrieve_response(
            "Error: The Request Property(s) ID do not match with the fields of QueryDefinition retrieve",
            "",
        );
    }
    let terms = filter_terms(request.path(&["RetrieveRequest", "Filter"]));
    let before = term(&terms, "CreatedDate").and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok());
    let mut matching: Vec<&QueryDefinition> = state
        .query_definitions
        .values()
        .filter(|q| term(&terms, "CustomerKey").is_none_or(|k| k == q.customer_key))
        .filter(|q| {
            term(&terms, "CategoryID").is_none_or(|c| q.category_id.map(|id| id.to_string()).as_deref() == Some(c))
        })
        .filter(|q| before.is_none_or(|b| q.created < b))
        .collect();
    matching.sort_by(|a, b| a.created.cmp(&b.created).then(a.object_id.cmp(&b.object_id)));
    let results: Vec<String> = matching
        .iter()
        .map(|q| {
            format!(
                r#"<Results xsi:type="QueryDefinition"><PartnerKey xsi:nil="true"/><ObjectID>{}</ObjectID><CustomerKey>{}</CustomerKey><Name>{}</Name><CreatedDate>{}</CreatedDate></Results>"#,
                q.object_id,
                escape(&q.customer_key),
                escape(&q.name),
                q.created.format("%Y-%m-%dT%H:%M:%S%.3f")
            )
        })
        .collect();
    paged(state, results)
}

fn retrieve_data_extensions(state: &State, request: &Element) -> String {
    let terms = filter_terms(request.path(&["RetrieveRequest", "Filter"]));
    let results: String = state
        .data_extensions
        .values()
        .filter(|d| term(&terms, "Name").is_none_or(|n| n == d.name))
        .filter(|d| term(&terms, "CustomerKey").is_none_or(|k| k == d.customer_key))
        .map(|d| {
            format!(
                r#"<Results xsi:type="DataExtension"><PartnerKey xsi:nil="true"/><ObjectID>{}</ObjectID><CustomerKey>{}</CustomerKey><Name>{}</Name></Results>"#,
                d.object_id,
                escape(&d.customer_key),
                escape(&d.name)
            )
        })
        .collect();
    retrieve_response("OK", &results)
}

fn retrieve_fields(state: &State, request: &Element) -> String {
    let terms = filter_terms(request.path(&["RetrieveRequest", "Filter"]));
    let Some(de) = term(&terms, "DataExtension.CustomerKey").and_then(|k| state.data_extensions.get(k)) else {
        return retrieve_response("OK", "");
    };
    let results: String = de
        .fields
        .iter()
        .map(|(name, field_type)| {
            let length = if matches!(field_type.as_str(), "Text" | "EmailAddress" | "Phone") { "<MaxLength>254</MaxLength>" } else { "" };
            format!(
                r#"<Results xsi:type="DataExtensionField"><PartnerKey xsi:nil="true"/><Name>{}</Name><FieldType>{field_type}</FieldType>{length}<IsPrimaryKey>{}</IsPrimaryKey><IsRequired>{}</IsRequired></Results>"#,
                escape(name),
                de.primary_keys.contains(name),
                de.required.contains(name) || de.primary_keys.contains(name)
            )
        })
        .collect();
    retrieve_response("OK", &results)
}

fn create_folder(state: &mut State, request: &Element) -> String {
    let o = request.child("Objects").cloned().unwrap_or_default();
    let id = state.next_id();
    state.folders.push(Folder {
        id,
        name: o.text_at(&["Name"]).unwrap_or("").to_string(),
        parent_id: o
            .text_at(&["ParentFolder", "ID"])
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        content_type: o.text_at(&["ContentType"]).unwrap_or("").to_string(),
    });
    create_response(Ok((id, uuid::Uuid::new_v4().to_string())))
}

fn create_data_extension(state: &mut State, request: &Element) -> String {
    let o = request.child("Objects").cloned().unwrap_or_default();
    let key = o.text_at(&["CustomerKey"]).unwrap_or("").to_string();
    let name = o.text_at(&["Name"]).unwrap_or("").to_string();
    if state.data_extensions.contains_key(&key) || state.data_extensions.values().any(|d| d.name == name) {
        return create_response(Err("Data Extension name already exists".into()));
    }
    let fields: Vec<(String, String)> = o
        .child("Fields")
        .map(|fs| {
            fs.children("Field")
                .map(|f| {
                    (
                        f.text_at(&["Name"]).unwrap_or("").to_string(),
                        f.text_at(&["FieldType"]).unwrap_or("Text").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if fields.is_empty() {
        return create_response(Err("A Data Extension needs at least one field".into()));
    }
    let folder_id: i64 = o.text_at(&["CategoryID"]).and_then(|c| c.parse().ok()).unwrap_or(0);
    if !state.folders.iter().any(|f| f.id == folder_id) {
        return create_response(Err(format!("Invalid CategoryID: folder {folder_id} does not exist")));
    }
    let object_id = uuid::Uuid::new_v4().to_string();
    let id = state.next_id();
    state.data_extensions.insert(
        key.clone(),
        DataExtension {
            object_id: object_id.clone(),
            name,
            customer_key: key,
            folder_id: o.text_at(&["CategoryID"]).and_then(|c| c.parse().ok()).unwrap_or(0),
            fields,
            primary_keys: vec![],
            required: vec![],
            rows: vec![],
            queryable_at: Some(Instant::now()),
            not_ready_status: 404,
        },
    );
    create_response(Ok((id, object_id)))
}

fn create_query_definition(state: &mut State, request: &Element) -> String {
    let o = request.child("Objects").cloned().unwrap_or_default();
    let key = o.text_at(&["CustomerKey"]).unwrap_or("").to_string();
    let category_id = o.text_at(&["CategoryID"]).and_then(|c| c.parse::<i64>().ok());
    if category_id == Some(0) {
        return create_response(Err("CategoryID 0 is not a folder".into()));
    }
    if state.query_definitions.values().any(|q| q.customer_key == key) {
        return create_response(Err("A Query Activity with this key already exists".into()));
    }
    let target_key = o
        .text_at(&["DataExtensionTarget", "CustomerKey"])
        .unwrap_or("")
        .to_string();
    if !state.data_extensions.contains_key(&target_key) {
        return create_response(Err("The target Data Extension does not exist".into()));
    }
    let object_id = uuid::Uuid::new_v4().to_string();
    state.query_definitions.insert(
        object_id.clone(),
        QueryDefinition {
            object_id: object_id.clone(),
            customer_key: key,
            name: o.text_at(&["Name"]).unwrap_or("").to_string(),
            query_text: o.text_at(&["QueryText"]).unwrap_or("").to_string(),
            target_key,
            category_id,
            update_type: o.text_at(&["TargetUpdateType"]).unwrap_or("Overwrite").to_string(),
            created: chrono::Utc::now(),
        },
    );
    let created = state.query_definitions.get(&object_id).expect("just inserted");
    let log = (
        created.customer_key.clone(),
        created.query_text.clone(),
        created.update_type.clone(),
    );
    state.created_queries.push(log);
    // MCE reports NewID 0 for QueryDefinitions: only NewObjectID is usable.
    create_response(Ok((0, object_id)))
}

fn perform(state: &mut State, request: &Element) -> String {
    let id = request
        .text_at(&["Definitions", "Definition", "ObjectID"])
        .unwrap_or("");
    let result = match state.query_definitions.get(id).cloned() {
        None => "<StatusCode>Error</StatusCode><StatusMessage>QueryDefinition not found</StatusMessage><Task><StatusCode>Error</StatusCode><StatusMessage>Not found</StatusMessage></Task>".to_string(),
        Some(qd) => {
            let task_id = state.next_id().to_string();
            let scenario = state.scenario_for(&qd.query_text);
            if let Some(de) = state.data_extensions.get_mut(&qd.target_key).filter(|_| qd.update_type == "Overwrite") {
                de.queryable_at = None;
                de.rows.clear();
            }
            state.start_task(
                task_id.clone(),
                Task {
                    query_object_id: qd.object_id,
                    target_key: qd.target_key,
                    update_type: qd.update_type,
                    started: Instant::now(),
                    scenario,
                    finished: false,
                },
            );
            format!(
                "<StatusCode>OK</StatusCode><StatusMessage>Performed</StatusMessage><Task><StatusCode>OK</StatusCode><StatusMessage>Queued</StatusMessage><ID>{task_id}</ID><InteractionObjectID>{}</InteractionObjectID></Task>",
                uuid::Uuid::new_v4()
            )
        }
    };
    format!(
        r#"<PerformResponseMsg xmlns="{NS}"><Results><Result>{result}</Result></Results><OverallStatus>OK</OverallStatus><OverallStatusMessage/><RequestID>{}</RequestID></PerformResponseMsg>"#,
        uuid::Uuid::new_v4()
    )
}
