//! compose.yaml, the Kubernetes manifests and the Dockerfile: they parse,
//! name files that exist and settings the binary knows.

use std::collections::BTreeSet;

use serde_norway::Value;
use tests::{run_command, workspace_root};

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

/// Every environment variable `run` reads, from its own help.
fn known_settings() -> BTreeSet<String> {
    let (code, help, _) = run_command(&["run", "--help"], &[], None);
    assert_eq!(code, 0);
    let mut known: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_string))
        .collect();
    known.insert("RUST_LOG".into());
    assert!(
        known.contains("POLL_MAX_ACK_PENDING") && known.contains("DATABASE_URL"),
        "{known:?}"
    );
    known
}

fn keys(map: &Value) -> Vec<String> {
    map.as_mapping()
        .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[test]
fn kubernetes_manifests_parse_and_fit_the_service() {
    let known = known_settings();
    let kustomization = yaml("deploy/kustomization.yaml");
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let file = resource.as_str().unwrap();
        assert!(
            workspace_root().join("deploy").join(file).exists(),
            "{file} is listed but missing"
        );
    }
    for file in ["deploy/configmap.yaml", "deploy/secret.example.yaml"] {
        let doc = yaml(file);
        let data = if doc["data"].is_mapping() {
            &doc["data"]
        } else {
            &doc["stringData"]
        };
        for key in keys(data) {
            assert!(
                known.contains(&key),
                "{file} sets {key}, which the service does not read"
            );
        }
    }
    let deployment = yaml("deploy/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > service::app::DRAIN_DEADLINE.as_secs(),
        "the grace period must exceed the drain deadline"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let pdb = yaml("deploy/pdb.yaml");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn compose_parses_and_wires_nats_postgres_the_simulator_and_the_service() {
    let known = known_settings();
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    for name in ["nats", "postgres", "jaeger", "mce-sim", "worker"] {
        assert!(services[name].is_mapping(), "compose has no {name} service");
    }
    let volumes: Vec<&str> = services["nats"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        volumes.iter().any(|v| v.starts_with("./nats.conf:")),
        "nats runs with nats.conf"
    );
    // Every variable nats.conf reads (`$NAME` not followed by a `.`, which
    // would be a subject such as `$JS.API`) is set for the nats service.
    let conf = std::fs::read_to_string(workspace_root().join("nats.conf")).unwrap();
    let nats_env = keys(&services["nats"]["environment"]);
    let mut variables = 0;
    for (i, _) in conf.match_indices('$') {
        let name: String = conf[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if name.is_empty() || conf[i + 1 + name.len()..].starts_with('.') {
            continue;
        }
        variables += 1;
        assert!(
            nats_env.contains(&name),
            "compose's nats does not set {name}, which nats.conf reads"
        );
    }
    assert_eq!(variables, 4, "the four users' passwords");
    for key in keys(&services["worker"]["environment"]) {
        // The standard OTEL_* variables are read by the trace exporter.
        let standard_otel = key.starts_with("OTEL_");
        assert!(
            known.contains(&key) || standard_otel,
            "compose sets {key}, which the service does not read"
        );
    }
    assert!(services["jaeger"].is_mapping(), "Jaeger receives the traces");
    let otlp = services["worker"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        .as_str()
        .unwrap();
    assert!(otlp.contains("jaeger:4318"), "{otlp}");
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER 10001"), "the image runs as non-root");
}
