//! The machine-readable contract: a JSON Schema (draft-07) of every message
//! the service consumes, publishes or answers, and an AsyncAPI 3 document of
//! its subjects, generated from the message types themselves.
//! `shell-query-worker contract write docs` writes them;
//! `contract check docs` (and a test) fails when the committed files differ.

use std::path::Path;

use schemars::JsonSchema;
use serde_json::{Value, json};

use shell_query_core::api::{ResultsReply, ResultsRequest, StatusReply, StatusRequest};
use shell_query_core::event::StatusEvent;
use shell_query_core::message::{CancelMessage, ExecuteMessage, PollMessage};

/// One schema file: its name under `schemas/`, the AsyncAPI message name,
/// and the schema.
pub struct Schema {
    pub file: &'static str,
    pub message: &'static str,
    pub schema: Value,
}

/// Who writes a message decides which fields its schema requires: a message
/// the service sends is described as it serialises (a field it always
/// writes is required, `null` where it can be), one it receives as it
/// deserialises (a field with a default may be left out).
#[derive(Clone, Copy)]
enum Direction {
    Receives,
    Sends,
}

fn schema_of<T: JsonSchema>(file: &'static str, message: &'static str, direction: Direction) -> Schema {
    let settings = schemars::generate::SchemaSettings::draft07();
    let settings = match direction {
        Direction::Receives => settings.for_deserialize(),
        Direction::Sends => settings.for_serialize(),
    };
    let mut schema = settings.into_generator().into_root_schema_for::<T>().to_value();
    if let Some(map) = schema.as_object_mut() {
        map.insert(
            "$id".into(),
            format!("https://shell-query.invalid/schemas/{file}").into(),
        );
    }
    for (name, definition) in schema
        .get_mut("definitions")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flatten()
    {
        if let Some(d) = definition.as_object_mut() {
            d.entry("title").or_insert_with(|| name.clone().into());
        }
    }
    standard_formats(&mut schema);
    Schema { file, message, schema }
}

/// The formats a draft-07 validator knows (plus `uuid`, standard since
/// 2019-09 and known to ajv-formats): anything else is an unknown format
/// to a strict validator (ajv refuses `uint32`).
pub const STANDARD_FORMATS: [&str; 18] = [
    "date-time",
    "date",
    "time",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
    "uuid",
];

/// Replaces schemars' Rust-type formats (`int32`, `uint32`, `int64`...) by
/// the bounds they mean, where those are exact in a double (up to 32 bits;
/// `uint64` keeps its `minimum` of 0), and drops them.
fn standard_formats(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let format = map.get("format").and_then(Value::as_str).map(str::to_string);
            if let Some(format) = format.filter(|f| !STANDARD_FORMATS.contains(&f.as_str())) {
                map.remove("format");
                let bounds: Option<(i64, i64)> = match format.as_str() {
                    "int8" => Some((i8::MIN.into(), i8::MAX.into())),
                    "int16" => Some((i16::MIN.into(), i16::MAX.into())),
                    "int32" => Some((i32::MIN.into(), i32::MAX.into())),
                    "uint8" => Some((0, u8::MAX.into())),
                    "uint16" => Some((0, u16::MAX.into())),
                    "uint32" => Some((0, u32::MAX.into())),
                    _ => None,
                };
                if let Some((min, max)) = bounds {
                    map.entry("minimum").or_insert(min.into());
                    map.entry("maximum").or_insert(max.into());
                }
                if format.starts_with("uint") {
                    map.entry("minimum").or_insert(0.into());
                }
            }
            map.values_mut().for_each(standard_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(standard_formats),
        _ => {}
    }
}

/// Every message of the contract.
pub fn schemas() -> Vec<Schema> {
    vec![
        schema_of::<ExecuteMessage>("execute-message.json", "executeMessage", Direction::Receives),
        schema_of::<PollMessage>("poll-message.json", "pollMessage", Direction::Sends),
        schema_of::<CancelMessage>("cancel-message.json", "cancelMessage", Direction::Receives),
        schema_of::<StatusEvent>("status-event.json", "statusEvent", Direction::Sends),
        schema_of::<ResultsRequest>("results-request.json", "resultsRequest", Direction::Receives),
        schema_of::<ResultsReply>("results-reply.json", "resultsReply", Direction::Sends),
        schema_of::<StatusRequest>("status-request.json", "statusRequest", Direction::Receives),
        schema_of::<StatusReply>("status-reply.json", "statusReply", Direction::Sends),
    ]
}

pub use shell_query_core::api::ENDPOINTS;

/// `executeMessage` → `ExecuteMessage`: a message's title, the name model
/// generators give its class (its payload schema has the same title).
fn title_of(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn message(name: &str, summary: &str, file: &str, headers: Value) -> Value {
    let mut m = json!({
        "name": name,
        "title": title_of(name),
        "summary": summary,
        "contentType": "application/json",
        // The schema itself, not a multi-format wrapper around it: model
        // generators (Modelina) name a wrapped payload after its `$id`.
        // Every schema is draft-07, which AsyncAPI's default format extends.
        "payload": { "$ref": format!("schemas/{file}") },
    });
    if !headers.is_null() {
        m["headers"] = headers;
    }
    m
}

fn header_schema(fields: &[(&str, &str)]) -> Value {
    let properties: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(name, description)| {
            (
                (*name).to_string(),
                json!({ "type": "string", "description": description }),
            )
        })
        .collect();
    json!({ "type": "object", "properties": properties })
}

/// The headers' schema of a message, titled after it.
fn headers_of(message: &str, fields: &[(&str, &str)]) -> Value {
    let mut schema = header_schema(fields);
    schema["title"] = format!("{}Headers", title_of(message)).into();
    schema
}

fn reference(to: &str) -> Value {
    json!({ "$ref": to })
}

/// The AsyncAPI 3 document, for subjects under the default prefix.
pub(crate) fn asyncapi() -> Value {
    let traceparent = ("traceparent", "W3C trace context; the service continues the trace.");
    let run_id = json!({ "description": "The run's id (a UUID)." });
    let channel = |address: &str, description: &str, messages: &[&str]| {
        let messages: serde_json::Map<String, Value> = messages
            .iter()
            .map(|m| ((*m).to_string(), reference(&format!("#/components/messages/{m}"))))
            .collect();
        let mut c = json!({ "address": address, "description": description, "messages": messages });
        if address.contains("{runId}") {
            c["parameters"] = json!({ "runId": run_id });
        }
        if address.contains("{kind}") {
            c["parameters"]["kind"] = json!({
                "enum": ["execute", "poll", "cancel"],
                "description": "The consumer that gave up on the message.",
            });
        }
        c
    };
    // Each operation names its channel's messages, and a request its
    // reply's: generators make models of the messages operations name.
    let messages_of = |channel: &str, messages: &[&str]| -> Value {
        messages
            .iter()
            .map(|m| reference(&format!("#/channels/{channel}/messages/{m}")))
            .collect()
    };
    let operation = |action: &str, channel: &str, message: &str, summary: &str| {
        json!({
            "action": action,
            "channel": reference(&format!("#/channels/{channel}")),
            "messages": messages_of(channel, &[message]),
            "summary": summary,
        })
    };
    let request_reply = |channel: &str, message: &str, reply: &str, summary: &str| {
        let mut o = operation("receive", channel, message, summary);
        o["reply"] = json!({
            "channel": reference("#/channels/apiReply"),
            "messages": messages_of("apiReply", &[reply]),
        });
        o
    };
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "shell-query-worker",
            "version": shell_query_core::api::CONTRACT_VERSION,
            "description": "Runs SQL on Salesforce Marketing Cloud Engagement for the API: \
                execute messages start runs, status events report them, the shell-query \
                micro service answers results. Generated from the Rust message types by \
                `shell-query-worker contract write docs`; docs/CONTRACT.md explains each part. \
                Subjects use the default SUBJECT_PREFIX `shell_query`.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "production": {
                "host": "{host}:{port}",
                "protocol": "nats",
                "title": "NATS with JetStream over TLS",
                "description": "Clients connect with TLS: a `tls://` URL, the server's certificate checked against the CA \
                    the deployment names (the service's NATS_TLS_CA); when the server verifies clients (`verify: true` in \
                    nats.conf) each presents its own certificate too (NATS_TLS_CERT, NATS_TLS_KEY). Every client is a \
                    nats.conf user with a password and only the rights its role needs: shell_query_api for the API, \
                    shell_query_service for the service, shell_query_admin for operators.",
                "variables": {
                    "host": { "description": "The NATS server's name, as its certificate names it.", "default": "nats" },
                    "port": { "description": "The client port.", "default": "4222" },
                },
                "security": [reference("#/components/securitySchemes/userPassword")],
                "tags": [{ "name": "tls", "description": "TLS is required." }],
            },
            "development": {
                "host": "localhost:4222",
                "protocol": "nats",
                "title": "Local NATS (compose.yaml), no TLS",
                "description": "The development server of compose.yaml with the repository's nats.conf: the same users and \
                    rights, in plain text on the loopback only.",
                "security": [reference("#/components/securitySchemes/userPassword")],
            },
        },
        "channels": {
            "execute": channel("shell_query.execute.{runId}", "Stream SHELL_QUERY_JOBS. The API publishes one message per run with Nats-Msg-Id `execute:<runId>`.", &["executeMessage"]),
            "poll": channel("shell_query.poll.{runId}", "Stream SHELL_QUERY_JOBS, at most one message per run. Only the service publishes here.", &["pollMessage"]),
            "cancel": channel("shell_query.cancel.{runId}", "Stream SHELL_QUERY_JOBS. The API asks to cancel a run.", &["cancelMessage"]),
            "status": channel("shell_query.status.{runId}", "Stream SHELL_QUERY_STATUS: every step of a run, terminal events once.", &["statusEvent"]),
            "dlq": channel("shell_query.dlq.{kind}.{runId}", "Stream SHELL_QUERY_DLQ: redacted copies of messages the service gave up on.", &["deadLetter"]),
            "apiResults": channel("shell_query.api.results", "The shell-query micro service's results endpoint (queue group q).", &["resultsRequest"]),
            "apiStatus": channel("shell_query.api.status", "The shell-query micro service's status endpoint (queue group q).", &["statusRequest"]),
            "apiReply": {
                "address": null,
                "description": "The requester's inbox. An error reply has an empty body and the headers Nats-Service-Error-Code (400, 404, 409, 413, 422, 503) and Nats-Service-Error.",
                "messages": {
                    "resultsReply": reference("#/components/messages/resultsReply"),
                    "statusReply": reference("#/components/messages/statusReply"),
                },
            },
        },
        "operations": {
            "startRun": operation("receive", "execute", "executeMessage", "Start a run: validate, create its Data Extension and QueryDefinition, perform it."),
            "schedulePoll": operation("send", "poll", "pollMessage", "The one poll message of a run, deduplicated by Nats-Msg-Id `poll:<runId>`."),
            "pollRun": operation("receive", "poll", "pollMessage", "Check MCE once per delivery; redeliver with a delay until the run ends."),
            "cancelRun": operation("receive", "cancel", "cancelMessage", "Cancel a run of this tenant."),
            "publishStatus": operation("send", "status", "statusEvent", "A run's steps and its one terminal event."),
            "deadLetter": operation("send", "dlq", "deadLetter", "A message no retry could handle, redacted, with its reason."),
            "answerResults": request_reply("apiResults", "resultsRequest", "resultsReply", "A page of a ready run's results."),
            "answerStatus": request_reply("apiStatus", "statusRequest", "statusReply", "A run's row."),
        },
        "components": {
            "securitySchemes": {
                "userPassword": {
                    "type": "userPassword",
                    "description": "A nats.conf user and its password (NATS_USER and NATS_PASSWORD for the service). \
                        A request outside the user's rights is refused by the server with a permissions violation.",
                },
            },
            "messages": {
                "executeMessage": message("executeMessage", "Run this SQL.", "execute-message.json",
                    headers_of("executeMessage", &[("Nats-Msg-Id", "`execute:<runId>` from the API (a second publish within the stream's duplicate window is dropped); `execute:<runId>:<unix ms>` from the reconciler."), traceparent])),
                "pollMessage": message("pollMessage", "Poll this run.", "poll-message.json",
                    headers_of("pollMessage", &[("Nats-Msg-Id", "`poll:<runId>` from the execute step, `poll:<runId>:<unix ms>` from the reconciler."), traceparent])),
                "cancelMessage": message("cancelMessage", "Cancel this run.", "cancel-message.json",
                    headers_of("cancelMessage", &[("Nats-Msg-Id", "Optional: a cancel needs no deduplication."), traceparent])),
                "statusEvent": message("statusEvent", "A step of a run.", "status-event.json",
                    headers_of("statusEvent", &[("Nats-Msg-Id", "`status:<runId>:<status>`"), traceparent])),
                "deadLetter": {
                    "name": "deadLetter",
                    "title": "DeadLetter",
                    "summary": "The original body, redacted: SQL is encrypted with the service's key, a body over 1.5 MiB is replaced by its size and SHA-256.",
                    "headers": headers_of("deadLetter", &[
                        ("Shell-Query-Error", "Why the service gave up, one line."),
                        ("Shell-Query-Original-Subject", "Where the message was published; `dlq replay` publishes it there again."),
                        ("Shell-Query-Redacted", "`body encrypted`, `sqlText encrypted` or `summary`; absent when the body is as it came."),
                    ]),
                },
                "resultsRequest": message("resultsRequest", "Ask for a page of results.", "results-request.json", Value::Null),
                "resultsReply": message("resultsReply", "A page of results.", "results-reply.json", Value::Null),
                "statusRequest": message("statusRequest", "Ask for a run's row.", "status-request.json", Value::Null),
                "statusReply": message("statusReply", "A run's row.", "status-reply.json", Value::Null),
            },
        },
    })
}

/// Every generated file: its path under the docs folder and its text.
pub(crate) fn files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = schemas()
        .into_iter()
        .map(|s| {
            let text = serde_json::to_string_pretty(&s.schema).expect("a schema serialises") + "\n";
            (format!("schemas/{}", s.file), text)
        })
        .collect();
    let yaml = serde_norway::to_string(&asyncapi()).expect("the AsyncAPI document serialises");
    files.push((
        "asyncapi.yaml".into(),
        format!("# Generated by `shell-query-worker contract write docs`: do not edit by hand.\n{yaml}"),
    ));
    files
}

/// Writes every file under `dir`.
pub(crate) fn write(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir.join("schemas"))?;
    let mut written = Vec::new();
    for (path, text) in files() {
        std::fs::write(dir.join(&path), text)?;
        written.push(path);
    }
    Ok(written)
}

/// The files under `dir` that are missing or differ from what the types
/// generate.
pub fn stale(dir: &Path) -> Vec<String> {
    files()
        .into_iter()
        .filter(|(path, text)| std::fs::read_to_string(dir.join(path)).ok().as_deref() != Some(text.as_str()))
        .map(|(path, _)| path)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_a_schema_and_every_reference_resolves() {
        let files: Vec<String> = schemas().iter().map(|s| s.file.to_string()).collect();
        let text = serde_json::to_string(&asyncapi()).unwrap();
        for (_, request, reply) in ENDPOINTS {
            assert!(files.contains(&request.to_string()) && files.contains(&reply.to_string()));
        }
        for part in text.split("\"$ref\":\"").skip(1) {
            let target = part.split('"').next().unwrap();
            if let Some(file) = target.strip_prefix("schemas/") {
                assert!(files.contains(&file.to_string()), "{target}");
            } else {
                let path: Vec<&str> = target.trim_start_matches("#/").split('/').collect();
                let mut node = asyncapi();
                for step in path {
                    node = node[step].take();
                }
                assert!(node.is_object(), "{target} resolves to nothing");
            }
        }
        let execute = &schemas()[0].schema;
        assert_eq!(execute["required"], json!(["runId", "tenantId", "mid"]));
        assert!(execute["oneOf"].is_array());
    }
}
