//! The machine-readable contract: the committed schemas and AsyncAPI
//! document are what the Rust types generate; the contract's examples and
//! what the running service really sends validate against them; invalid
//! messages do not.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tests::{run_command, workspace_root};

use crate::support::System;

/// The committed schemas, compiled.
struct Validator {
    schemas: boon::Schemas,
    index: std::collections::BTreeMap<String, boon::SchemaIndex>,
}

impl Validator {
    fn load(dir: &Path) -> Validator {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        // Draft-07 treats `format` as a note; the API's validators may not.
        compiler.enable_format_assertions();
        let mut index = std::collections::BTreeMap::new();
        let files: Vec<String> = service::app::contract::schemas()
            .iter()
            .map(|s| s.file.to_string())
            .collect();
        for file in &files {
            let text = std::fs::read_to_string(dir.join("schemas").join(file)).unwrap();
            let schema: Value = serde_json::from_str(&text).unwrap();
            let id = schema["$id"].as_str().unwrap().to_string();
            compiler.add_resource(&id, schema).unwrap();
            let compiled = compiler
                .compile(&id, &mut schemas)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            index.insert(file.clone(), compiled);
        }
        Validator { schemas, index }
    }

    fn check(&self, file: &str, instance: &Value) -> Result<(), String> {
        let index = *self.index.get(file).unwrap_or_else(|| panic!("no schema {file}"));
        self.schemas.validate(instance, index).map_err(|e| format!("{e:#}"))
    }
}

fn docs() -> std::path::PathBuf {
    workspace_root().join("docs")
}

#[test]
fn the_committed_schemas_and_asyncapi_are_what_the_types_generate() {
    let stale = service::app::contract::stale(&docs());
    assert!(
        stale.is_empty(),
        "stale: {stale:?}: run `shell-query-worker contract write docs` and commit"
    );
    let dir = docs().display().to_string();
    let (code, out, err) = run_command(&["contract", "check", &dir], &[], None);
    assert_eq!(code, 0, "{out}{err}");
    // The command notices a difference.
    let copy = tests::TempDir::new("contract");
    let copy_dir = copy.0.display().to_string();
    let (code, _, err) = run_command(&["contract", "write", &copy_dir], &[], None);
    assert_eq!(code, 0, "{err}");
    std::fs::write(copy.0.join("schemas/poll-message.json"), "{}").unwrap();
    let (code, _, err) = run_command(&["contract", "check", &copy_dir], &[], None);
    assert_eq!(code, 1);
    assert!(err.contains("poll-message.json"), "{err}");

    // The AsyncAPI document names every subject the service uses.
    let asyncapi: Value =
        serde_norway::from_str(&std::fs::read_to_string(docs().join("asyncapi.yaml")).unwrap()).unwrap();
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    let addresses: Vec<&str> = asyncapi["channels"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| c["address"].as_str())
        .collect();
    for kind in [
        "execute",
        "poll",
        "cancel",
        "status",
        "dlq",
        "api.results",
        "api.status",
    ] {
        assert!(
            addresses.iter().any(|a| a.starts_with(&format!("shell_query.{kind}"))),
            "{kind}: {addresses:?}"
        );
    }
}

#[test]
fn every_example_in_the_contract_validates_and_broken_messages_do_not() {
    let validator = Validator::load(&docs());
    let contract = std::fs::read_to_string(docs().join("CONTRACT.md")).unwrap();
    let mut checked = 0;
    for block in contract.split("```json\n").skip(1) {
        let before = contract[..contract.find(block).unwrap()].trim_end_matches("```json\n");
        let marker = before
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("<!-- schema: "))
            .and_then(|l| l.strip_suffix(" -->"))
            .unwrap_or_else(|| panic!("a JSON example without a `<!-- schema: file -->` line: {block:.80}"));
        let json = block.split("```").next().unwrap();
        let example: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{marker}: {e}"));
        validator
            .check(marker, &example)
            .unwrap_or_else(|e| panic!("the {marker} example does not validate: {e}"));
        checked += 1;
    }
    assert!(checked >= 7, "{checked} examples");

    let run = uuid::Uuid::new_v4();
    let tenant = uuid::Uuid::new_v4();
    let good = serde_json::json!({ "runId": run, "tenantId": tenant, "mid": "510000123", "sqlText": "SELECT 1", "someNewField": 1 });
    validator
        .check("execute-message.json", &good)
        .expect("fields the service does not know are allowed");
    for (why, bad) in [
        (
            "both SQL fields",
            serde_json::json!({ "runId": run, "tenantId": tenant, "mid": "1", "sqlText": "x", "sqlTextEncrypted": "y" }),
        ),
        (
            "no SQL",
            serde_json::json!({ "runId": run, "tenantId": tenant, "mid": "1" }),
        ),
        (
            "no runId",
            serde_json::json!({ "tenantId": tenant, "mid": "1", "sqlText": "x" }),
        ),
        (
            "a MID that is not digits",
            serde_json::json!({ "runId": run, "tenantId": tenant, "mid": "12a", "sqlText": "x" }),
        ),
        (
            "a runId that is no UUID",
            serde_json::json!({ "runId": 7, "tenantId": tenant, "mid": "1", "sqlText": "x" }),
        ),
    ] {
        assert!(validator.check("execute-message.json", &bad).is_err(), "{why} passed");
    }
    let too_big = serde_json::json!({ "runId": run, "tenantId": tenant, "pageSize": 2501 });
    assert!(validator.check("results-request.json", &too_big).is_err());
    let bad_status = serde_json::json!({ "runId": run, "status": "done", "message": "x", "timestamp": "t" });
    assert!(validator.check("status-event.json", &bad_status).is_err());
}

/// What the running service publishes and answers, checked against the
/// schemas; its micro service names the schemas in its endpoints' metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_service_sends_matches_the_schemas() {
    let system = System::start().await;
    let validator = Validator::load(&docs());
    let id = system.submit("SELECT Email FROM X", None).await;
    assert_eq!(system.wait_terminal(id, Duration::from_secs(60)).await.status, "ready");
    system.wait_event(id, "ready").await;
    let subject = format!("{}.status.{id}", crate::support::PREFIX);
    let events = crate::support::read_all(&system.js, "SHELL_QUERY_STATUS", Some(subject)).await;
    assert!(events.len() >= 3, "{} events", events.len());
    for event in &events {
        let value: Value = serde_json::from_slice(&event.payload).unwrap();
        validator.check("status-event.json", &value).unwrap();
    }
    let ask = serde_json::json!({ "runId": id, "tenantId": system.tenant_id, "userId": system.user_id });
    validator.check("status-request.json", &ask).unwrap();
    let status = system.request("status", ask.clone()).await.expect("a status reply");
    validator.check("status-reply.json", &status).unwrap();
    let mut page = ask;
    page["pageSize"] = 10.into();
    validator.check("results-request.json", &page).unwrap();
    let results = system.request("results", page).await.expect("a results page");
    validator.check("results-reply.json", &results).unwrap();

    let admin = system.nats.connect_as(tests::ADMIN_USER).await.unwrap();
    let info = admin.request("$SRV.INFO.shell-query", "".into()).await.unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    for (name, request, reply) in shell_query_core::api::ENDPOINTS {
        let endpoint = info["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} endpoint in {info}"));
        assert_eq!(endpoint["metadata"]["request_schema"], request, "{endpoint}");
        assert_eq!(endpoint["metadata"]["response_schema"], reply, "{endpoint}");
        assert!(docs().join("schemas").join(request).is_file());
        assert!(docs().join("schemas").join(reply).is_file());
    }
}

/// The draft-07 keywords; a strict validator (ajv `strict: true`) refuses
/// any other.
const KEYWORDS: [&str; 41] = [
    "$id",
    "$schema",
    "$ref",
    "$comment",
    "title",
    "description",
    "default",
    "readOnly",
    "writeOnly",
    "examples",
    "definitions",
    "type",
    "enum",
    "const",
    "format",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "items",
    "additionalItems",
    "maxItems",
    "minItems",
    "uniqueItems",
    "contains",
    "maxProperties",
    "minProperties",
    "required",
    "properties",
    "patternProperties",
    "additionalProperties",
    "dependencies",
    "propertyNames",
    "if",
    "then",
    "else",
    "allOf",
];

/// Keywords that only apply to one kind of value: ajv's `strictTypes`
/// wants that type named by the schema or by the one it is part of.
fn keyword_type(keyword: &str) -> Option<&'static str> {
    match keyword {
        "properties"
        | "required"
        | "additionalProperties"
        | "patternProperties"
        | "maxProperties"
        | "minProperties"
        | "propertyNames"
        | "dependencies" => Some("object"),
        "items" | "additionalItems" | "maxItems" | "minItems" | "uniqueItems" | "contains" => Some("array"),
        "maxLength" | "minLength" | "pattern" | "format" => Some("string"),
        "maximum" | "minimum" | "exclusiveMaximum" | "exclusiveMinimum" | "multipleOf" => Some("number"),
        _ => None,
    }
}

/// What ajv's strict mode (with ajv-formats) and a model generator ask of
/// a schema, checked at `at` and below. `inherited` is the type the
/// schema around it (for `allOf`, `anyOf`, `oneOf` branches) names.
fn check_strict(schema: &Value, at: &str, inherited: &[String], problems: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        if !schema.is_boolean() {
            problems.push(format!("{at}: not a schema"));
        }
        return;
    };
    let mut types: Vec<String> = match &map.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    // A union is a nullable type or nothing (ajv wants `allowUnionTypes`).
    let non_null: Vec<&String> = types.iter().filter(|t| *t != "null").collect();
    if non_null.len() > 1 {
        problems.push(format!("{at}: union type {types:?}"));
    }
    if types.is_empty() {
        types = inherited.to_vec();
    }
    for (keyword, value) in map {
        let known = KEYWORDS.contains(&keyword.as_str()) || ["anyOf", "oneOf", "not"].contains(&keyword.as_str());
        if !known {
            problems.push(format!("{at}: unknown keyword `{keyword}`"));
        }
        if let Some(wanted) = keyword_type(keyword) {
            let named = types
                .iter()
                .any(|t| t == wanted || (wanted == "number" && t == "integer"));
            if !named {
                problems.push(format!("{at}: `{keyword}` without type {wanted}"));
            }
        }
        if keyword == "format" {
            let format = value.as_str().unwrap_or_default();
            if !service::app::contract::STANDARD_FORMATS.contains(&format) {
                problems.push(format!("{at}: non-standard format `{format}`"));
            }
        }
    }
    // What a generator makes a class of (an object, an enum, a branch of a
    // choice) is named by its title, never by its $id or place.
    let modelled = types.iter().any(|t| t == "object") || map.contains_key("enum") || map.contains_key("const");
    if modelled && !map.get("title").is_some_and(|t| t.as_str().is_some_and(is_model_name)) {
        problems.push(format!("{at}: no usable title ({:?})", map.get("title")));
    }
    for key in ["properties", "definitions", "patternProperties"] {
        for (name, sub) in map.get(key).and_then(Value::as_object).into_iter().flatten() {
            if key == "definitions" && sub.get("title").and_then(Value::as_str) != Some(name) {
                problems.push(format!("{at}/{key}/{name}: its title is not {name}"));
            }
            check_strict(sub, &format!("{at}/{key}/{name}"), &[], problems);
        }
    }
    for key in [
        "items",
        "additionalProperties",
        "additionalItems",
        "contains",
        "propertyNames",
        "not",
    ] {
        if let Some(sub) = map.get(key) {
            check_strict(sub, &format!("{at}/{key}"), &[], problems);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in map.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let branch = format!("{at}/{key}/{i}");
            let named = sub.get("$ref").is_some() || sub.get("type") == Some(&Value::from("null"));
            if key == "oneOf" && !named && sub.get("title").is_none() {
                problems.push(format!("{branch}: a choice without a title"));
            }
            check_strict(sub, &branch, &types, problems);
        }
    }
}

/// A class name: ASCII letters and digits, starting with a capital.
fn is_model_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase()) && name.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Every committed schema is valid draft-07 (boon checks it against the
/// meta-schema) and passes what ajv's strict mode checks on top: known
/// keywords and formats only, nullable unions only, each keyword beside
/// its type; every model a generator makes of it has a title, and the
/// AsyncAPI document names a titled model for every message, the replies
/// included.
#[test]
fn every_schema_is_strict_and_every_model_has_a_name() {
    let dir = docs().join("schemas");
    let mut problems = Vec::new();
    let mut titles = std::collections::BTreeMap::new();
    let mut compiler = boon::Compiler::new();
    compiler.enable_format_assertions();
    let mut compiled = boon::Schemas::new();
    for s in service::app::contract::schemas() {
        let text = std::fs::read_to_string(dir.join(s.file)).unwrap();
        let schema: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            schema["$schema"], "http://json-schema.org/draft-07/schema#",
            "{}",
            s.file
        );
        let id = schema["$id"].as_str().unwrap().to_string();
        compiler.add_resource(&id, schema.clone()).unwrap();
        compiler
            .compile(&id, &mut compiled)
            .unwrap_or_else(|e| panic!("{}: {e:#}", s.file));
        check_strict(&schema, s.file, &[], &mut problems);
        assert!(
            !text.contains("\"format\": \"uint") && !text.contains("\"format\": \"int"),
            "{}: a Rust-type format is left",
            s.file
        );
        titles.insert(
            s.file.to_string(),
            schema["title"].as_str().unwrap_or_default().to_string(),
        );
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // A schema that breaks the rules is caught (the check checks).
    let mut caught = Vec::new();
    let bad = serde_json::json!({
        "type": "object", "properties": {
            "n": { "type": "integer", "format": "uint32" },
            "s": { "type": ["string", "integer"] },
            "e": { "enum": ["a"] },
            "x": { "nullable": true, "maxLength": 3 },
        },
    });
    check_strict(&bad, "bad", &[], &mut caught);
    for expected in [
        "non-standard format `uint32`",
        "union type",
        "bad/properties/e: no usable title",
        "bad: no usable title",
        "unknown keyword `nullable`",
        "`maxLength` without type string",
    ] {
        assert!(caught.iter().any(|p| p.contains(expected)), "{expected}: {caught:#?}");
    }

    // The statuses are closed sets, always-present fields are required,
    // times are date-times.
    let read =
        |file: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap() };
    let status = read("status-reply.json");
    assert_eq!(
        status["definitions"]["RunStatus"]["enum"],
        serde_json::json!(["queued", "running", "ready", "failed", "canceled"])
    );
    assert_eq!(
        status["required"],
        serde_json::json!([
            "runId",
            "status",
            "errorMessage",
            "rowCount",
            "createdAt",
            "startedAt",
            "completedAt"
        ])
    );
    for time in ["createdAt", "startedAt", "completedAt"] {
        assert_eq!(status["properties"][time]["format"], "date-time", "{time}");
    }
    assert_eq!(
        read("status-event.json")["properties"]["timestamp"]["format"],
        "date-time"
    );
    assert_eq!(
        read("results-reply.json")["definitions"]["ResultsStatus"]["enum"],
        serde_json::json!(["ready"])
    );
    let encrypted = read("execute-message.json")["properties"]["sqlTextEncrypted"]["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        encrypted.contains("IV (12 bytes) ‖ tag (16 bytes) ‖\nciphertext"),
        "{encrypted}"
    );
    assert!(!encrypted.contains("iv:tag:data"), "{encrypted}");

    // The AsyncAPI document: every message titled like its payload's model,
    // every operation naming its messages, the requests their replies, and
    // the servers their security.
    let asyncapi: Value =
        serde_norway::from_str(&std::fs::read_to_string(docs().join("asyncapi.yaml")).unwrap()).unwrap();
    // A local reference, followed to what it finally names.
    let resolve = |pointer: &str| -> Value {
        let mut pointer = pointer.to_string();
        loop {
            let path = pointer.strip_prefix('#').unwrap_or_else(|| panic!("{pointer}"));
            let found = asyncapi
                .pointer(path)
                .cloned()
                .unwrap_or_else(|| panic!("{pointer} resolves to nothing"));
            match found["$ref"].as_str() {
                Some(next) => pointer = next.to_string(),
                None => return found,
            }
        }
    };
    let messages = asyncapi["components"]["messages"].as_object().unwrap();
    for (name, message) in messages {
        let title = message["title"].as_str().unwrap_or_default();
        assert!(is_model_name(title), "{name}: title {title:?}");
        assert!(
            message["headers"].is_null() || message["headers"]["title"].as_str().is_some_and(is_model_name),
            "{name}'s headers"
        );
        // The payload is the schema itself: a generator names a wrapped one
        // (`schemaFormat` + `schema`) after its `$id`.
        match message["payload"]["$ref"].as_str() {
            Some(file) => {
                let file = file.strip_prefix("schemas/").unwrap();
                assert_eq!(
                    titles[file], title,
                    "{name}: the payload's model is named like the message"
                );
            }
            None => assert_eq!(name, "deadLetter", "{name} has no payload schema"),
        }
    }
    let mut named: std::collections::BTreeSet<String> = Default::default();
    for (id, operation) in asyncapi["operations"].as_object().unwrap() {
        let listed = operation["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{id} names no message"));
        let replies = operation["reply"]["messages"].as_array().into_iter().flatten();
        for reference in listed.iter().chain(replies) {
            let message = resolve(reference["$ref"].as_str().unwrap());
            named.insert(message["title"].as_str().unwrap().to_string());
        }
    }
    for title in [
        "ExecuteMessage",
        "PollMessage",
        "CancelMessage",
        "StatusEvent",
        "DeadLetter",
        "ResultsRequest",
        "ResultsReply",
        "StatusRequest",
        "StatusReply",
    ] {
        assert!(named.contains(title), "no operation names {title}: {named:?}");
    }
    for reply in ["answerResults", "answerStatus"] {
        let reply = &asyncapi["operations"][reply]["reply"];
        assert_eq!(
            resolve(reply["channel"]["$ref"].as_str().unwrap())["address"],
            Value::Null
        );
    }
    let servers = asyncapi["servers"].as_object().unwrap();
    assert!(!servers.is_empty());
    for (name, server) in servers {
        assert_eq!(server["protocol"], "nats", "{name}");
        let security = server["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no security"));
        for scheme in security {
            assert_eq!(
                resolve(scheme["$ref"].as_str().unwrap())["type"],
                "userPassword",
                "{name}"
            );
        }
    }
    let production = &servers["production"];
    assert!(
        production["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "tls")
    );
    assert!(production["description"].as_str().unwrap().contains("TLS"));
}
