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
