//! compose.yaml, the Kubernetes manifests, the Dockerfile and the monitoring
//! kit (deploy/monitoring/): they parse, name files that exist, settings the
//! binary knows and metrics it exports, and don't bite (no Secret applied,
//! no `:latest`, Pod Security "restricted", alert rules that promtool
//! accepts).

use std::collections::BTreeSet;

use serde::Deserialize as _;
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

// ---------------------------------------------------------------------------
// Deploy files that don't bite: no Secret applied, a pinned image, the
// restricted Pod Security profile, a startup probe, spreading, scraping;
// compose as a runnable quickstart; a cached, locked Docker build; alert
// rules and a dashboard that name only metrics the service exports.

fn text(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(seq: &Value) -> Vec<String> {
    seq.as_sequence()
        .map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// A compose service's command as one string (a list is joined by spaces).
fn command_of(service: &Value) -> String {
    match &service["command"] {
        Value::String(s) => s.clone(),
        other => strings(other).join(" "),
    }
}

/// The image without its tag (a registry port's colon is not a tag).
fn image_name(image: &str) -> &str {
    let tail = image.rsplit('/').next().unwrap_or(image);
    match tail.rfind(':') {
        Some(i) => &image[..image.len() - tail.len() + i],
        None => image,
    }
}

fn image_tag(image: &str) -> Option<&str> {
    let tail = image.rsplit('/').next().unwrap_or(image);
    tail.rfind(':').map(|i| &tail[i + 1..])
}

fn deployment_pod() -> (Value, Value) {
    let deployment = yaml("deploy/deployment.yaml");
    let pod = deployment["spec"]["template"]["spec"].clone();
    (deployment, pod)
}

#[test]
fn kustomization_applies_no_secret_and_pins_the_image() {
    let kustomization = yaml("deploy/kustomization.yaml");
    let resources = strings(&kustomization["resources"]);
    assert!(!resources.is_empty());
    for file in &resources {
        let path = format!("deploy/{file}");
        for doc in serde_norway::Deserializer::from_str(&text(&path)) {
            let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_ne!(
                doc["kind"], "Secret",
                "{path} is applied by `kubectl apply -k deploy/` and would overwrite the real Secret"
            );
            assert!(
                !doc["apiVersion"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("monitoring.coreos.com"),
                "{path} needs the Prometheus Operator's CRDs: it belongs in deploy/monitoring/"
            );
        }
    }
    assert!(
        workspace_root().join("deploy/secret.example.yaml").exists(),
        "the example Secret stays, as documentation"
    );
    assert!(text("deploy/secret.example.yaml").contains("kubectl create secret generic shell-query-worker"));

    let (_, pod) = deployment_pod();
    let image = pod["containers"][0]["image"].as_str().unwrap();
    assert_ne!(image_tag(image), Some("latest"), "{image}: never :latest");
    let images = kustomization["images"]
        .as_sequence()
        .expect("kustomization sets the image");
    let entry = images
        .iter()
        .find(|i| i["name"].as_str() == Some(image_name(image)))
        .unwrap_or_else(|| panic!("no `images:` entry for the container image {image}"));
    assert!(entry["newName"].as_str().is_some_and(|n| !n.is_empty()), "{entry:?}");
    let tag = match &entry["newTag"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("newTag must be set: {other:?}"),
    };
    assert!(!tag.is_empty() && tag != "latest", "newTag {tag}");
}

#[test]
fn the_pod_meets_pod_security_restricted() {
    let (_, pod) = deployment_pod();
    assert_eq!(pod["automountServiceAccountToken"], false);
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[key], true, "{key}");
    }
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    let uid = pod_security["runAsUser"].as_u64().expect("runAsUser");
    assert_ne!(uid, 0);
    assert_ne!(pod_security["runAsGroup"].as_u64(), Some(0));
    let dockerfile = text("Dockerfile");
    assert!(
        dockerfile.contains(&format!("USER {uid}")),
        "the pod runs as {uid}, the image's user"
    );
    for volume in pod["volumes"].as_sequence().into_iter().flatten() {
        assert!(volume["hostPath"].is_null(), "no hostPath volumes: {volume:?}");
    }
    let containers = pod["containers"].as_sequence().unwrap();
    let init = pod["initContainers"].as_sequence().cloned().unwrap_or_default();
    for container in containers.iter().chain(&init) {
        let name = container["name"].as_str().unwrap_or("?");
        let sc = &container["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_ne!(sc["privileged"], true, "{name}");
        assert_ne!(sc["runAsNonRoot"], false, "{name}");
        assert_ne!(sc["runAsUser"].as_u64(), Some(0), "{name}");
        let drop = strings(&sc["capabilities"]["drop"]);
        assert!(
            drop.iter().any(|c| c == "ALL"),
            "{name} drops every capability: {drop:?}"
        );
        let add = strings(&sc["capabilities"]["add"]);
        assert!(
            add.iter().all(|c| c == "NET_BIND_SERVICE"),
            "{name} adds capabilities: {add:?}"
        );
        let seccomp = sc["seccompProfile"]["type"]
            .as_str()
            .or(pod_security["seccompProfile"]["type"].as_str());
        assert!(
            matches!(seccomp, Some("RuntimeDefault" | "Localhost")),
            "{name}: seccompProfile {seccomp:?}"
        );
    }
}

#[test]
fn the_pod_has_a_startup_probe_spreads_and_is_scraped() {
    let (deployment, pod) = deployment_pod();
    let container = &pod["containers"][0];
    let startup = &container["startupProbe"];
    assert_eq!(startup["httpGet"]["path"], "/healthz");
    assert_eq!(startup["httpGet"]["port"], "http");
    let budget = startup["periodSeconds"].as_u64().unwrap_or(10) * startup["failureThreshold"].as_u64().unwrap_or(3);
    assert!(
        budget >= 60,
        "migrations and connections at start get {budget} s, at least a minute"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

    let app_labels = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(app_labels["app"], "shell-query-worker");
    let spread = pod["topologySpreadConstraints"]
        .as_sequence()
        .expect("topologySpreadConstraints");
    let keys: Vec<&str> = spread.iter().filter_map(|c| c["topologyKey"].as_str()).collect();
    assert!(keys.contains(&"kubernetes.io/hostname"), "{keys:?}");
    for constraint in spread {
        assert_eq!(
            &constraint["labelSelector"]["matchLabels"], app_labels,
            "{constraint:?}"
        );
        assert!(constraint["maxSkew"].as_u64().is_some_and(|s| s >= 1));
    }

    // The http port, by name and number.
    let http = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a port named http");
    let port = http["containerPort"].as_u64().unwrap();
    let configmap = yaml("deploy/configmap.yaml");
    let http_addr = configmap["data"]["HTTP_ADDR"].as_str().unwrap_or("0.0.0.0:8080");
    assert!(
        http_addr.ends_with(&format!(":{port}")),
        "HTTP_ADDR {http_addr} vs {port}"
    );

    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string().as_str());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let monitor = yaml("deploy/monitoring/podmonitor.yaml");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(&monitor["spec"]["selector"]["matchLabels"], app_labels);
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_sequence().unwrap();
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(endpoint["port"], "http");
        assert_eq!(endpoint["path"], "/metrics");
    }
    // The `up` rules select the job the PodMonitor names after `app`.
    assert_eq!(monitor["spec"]["jobLabel"], "app");
    assert!(text("deploy/monitoring/alerts.yaml").contains("up{job=\"shell-query-worker\"}"));

    let monitoring = yaml("deploy/monitoring/kustomization.yaml");
    let resources = strings(&monitoring["resources"]);
    for file in ["podmonitor.yaml", "prometheusrule.yaml"] {
        assert!(resources.iter().any(|r| r == file), "{file} in {resources:?}");
    }
    for file in &resources {
        assert!(workspace_root().join("deploy/monitoring").join(file).exists(), "{file}");
    }
    // The PrometheusRule carries exactly alerts.yaml's groups.
    let rule = yaml("deploy/monitoring/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"],
        yaml("deploy/monitoring/alerts.yaml")["groups"],
        "prometheusrule.yaml differs from alerts.yaml: copy alerts.yaml's groups under its spec"
    );
}

#[test]
fn compose_is_a_runnable_quickstart() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];

    let nats = &services["nats"];
    assert!(
        !strings(&nats["healthcheck"]["test"]).is_empty() || nats["healthcheck"]["test"].is_string(),
        "nats has a healthcheck"
    );
    let nats_command = command_of(nats);
    let healthcheck = strings(&nats["healthcheck"]["test"]).join(" ");
    if healthcheck.contains(":8222") {
        assert!(
            nats_command.contains("-m 8222"),
            "the healthcheck's monitoring port is on"
        );
    }

    let jaeger = services["jaeger"]["image"].as_str().unwrap();
    assert!(jaeger.starts_with("jaegertracing/jaeger:2."), "{jaeger}: Jaeger 2");
    let jaeger_ports = strings(&services["jaeger"]["ports"]).join(" ");
    for port in ["4317", "4318", "16686"] {
        assert!(jaeger_ports.contains(port), "jaeger publishes {port}");
    }

    let worker = &services["worker"];
    let seed = &services["seed"];
    assert!(seed.is_mapping(), "a seed service");
    assert_eq!(seed["restart"], "no");
    assert_eq!(seed["image"], worker["image"], "seed runs the worker's image");
    let script = command_of(seed);
    for step in ["shell-query-worker migrate", "tenant upsert", "credentials upsert"] {
        assert!(script.contains(step), "seed runs `{step}`: {script}");
    }
    assert!(script.contains("--refresh-token-stdin"), "the token goes in on stdin");
    for key in ["DATABASE_URL", "ENCRYPTION_KEY"] {
        assert_eq!(seed["environment"][key], worker["environment"][key], "{key}");
    }
    assert_eq!(seed["depends_on"]["postgres"]["condition"], "service_healthy");
    // Every flag the seed passes exists (a renamed flag fails here, not in compose).
    for sub in [["tenant", "upsert"], ["credentials", "upsert"]] {
        let (code, help, err) = run_command(&[sub[0], sub[1], "--help"], &[], None);
        assert_eq!(code, 0, "{err}");
        let line = script
            .lines()
            .find(|l| l.contains(&format!("{} {}", sub[0], sub[1])))
            .unwrap();
        for flag in line.split_whitespace().filter(|w| w.starts_with("--")) {
            assert!(help.contains(flag), "`{} {}` has no {flag}", sub[0], sub[1]);
        }
    }
    // The simulator accepts the token the seed stores.
    let tokens = services["mce-sim"]["environment"]["MCE_SIM_REFRESH_TOKENS"]
        .as_str()
        .unwrap();
    assert!(
        tokens.split(',').any(|t| script.contains(&format!("echo {t} |"))),
        "seed stores one of {tokens}"
    );

    assert_eq!(
        worker["depends_on"]["seed"]["condition"], "service_completed_successfully",
        "the worker starts once the seed has run"
    );
    assert_eq!(worker["depends_on"]["nats"]["condition"], "service_healthy");

    let example = &services["example"];
    assert!(
        !strings(&example["profiles"]).is_empty(),
        "example is not started by `up`"
    );
    let example_script = command_of(example);
    assert!(
        example_script.contains("shell_query.execute."),
        "example publishes an execute message"
    );
    assert!(
        example_script.contains("shell_query.status."),
        "example shows the status events"
    );
    assert!(example_script.contains("--user shell_query_api"), "as the API's user");
    let inbox = "_INBOX.shell_query_api";
    assert!(example_script.contains(&format!("--inbox-prefix {inbox}")));
    assert!(
        text("nats.conf").contains(&format!("\"{inbox}.>\"")),
        "nats.conf lets the API receive replies under {inbox}"
    );
    // The example's run belongs to the seeded tenant, user and MID.
    let value_after = |s: &str, flag: &str| -> String {
        let rest = &s[s.find(flag).unwrap_or_else(|| panic!("{flag} in seed")) + flag.len()..];
        rest.split_whitespace().next().unwrap().to_string()
    };
    for (flag, field) in [
        ("--tenant-id ", "tenantId"),
        ("--user-id ", "userId"),
        ("--mid ", "mid"),
    ] {
        let seeded = value_after(&script, flag);
        assert!(
            example_script.contains(&format!("\"{field}\":\"{seeded}\"")),
            "example's {field} is the seeded {seeded}"
        );
    }
    // Compose interpolates `$NAME`: a shell's own `$` must be written `$$`.
    for (name, s) in [("seed", &script), ("example", &example_script)] {
        assert!(
            !s.replace("$$", "").contains('$'),
            "{name}'s command has a single `$`, which compose would interpolate"
        );
    }
}

#[test]
fn the_docker_build_is_locked_and_cached() {
    let dockerfile = text("Dockerfile");
    assert!(
        dockerfile.starts_with("# syntax=docker/dockerfile:1"),
        "BuildKit syntax first"
    );
    let build = dockerfile
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && l.contains("cargo build"))
        .expect("a cargo build");
    assert!(build.contains("--release") && build.contains("--locked"), "{build}");
    assert!(build.contains("-p service") && build.contains("-p mce-sim"), "{build}");
    let cached = dockerfile.contains("--mount=type=cache,target=/usr/local/cargo/registry")
        && dockerfile.contains("--mount=type=cache,target=/src/target");
    // Or a layer that builds the dependencies alone before the sources come in.
    let dependency_layer =
        dockerfile.contains("COPY Cargo.toml Cargo.lock") && dockerfile.matches("cargo build").count() >= 2;
    assert!(cached || dependency_layer, "dependencies are cached between builds");
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains("ca-certificates"));
    assert!(dockerfile.contains("USER 10001"), "the image runs as non-root");
}

/// promtool from PROMTOOL_BIN or PATH; a missing one fails the test.
fn promtool() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("PROMTOOL_BIN") {
        return bin.into();
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .expect("promtool is needed to check deploy/monitoring/alerts.yaml: apt-get install prometheus, or set PROMTOOL_BIN")
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let promtool = promtool();
    for args in [
        ["check", "rules", "deploy/monitoring/alerts.yaml"],
        ["test", "rules", "deploy/monitoring/alerts.test.yaml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(workspace_root())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric name a PromQL expression mentions: identifiers starting
/// with `shell_query_` or `process_` (label values are quoted, so a name
/// inside quotes is skipped).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.char_indices().peekable();
    let mut quoted: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quoted {
            if c == '\\' {
                chars.next();
            } else if c == q {
                quoted = None;
            }
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            quoted = Some(c);
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let token = &expr[i..end];
            if token.starts_with("shell_query_") || token.starts_with("process_") {
                names.push(token.to_string());
            }
        } else if c.is_ascii_digit() {
            // A number such as 1e3 or 5m is not an identifier.
            while chars
                .peek()
                .is_some_and(|&(_, d)| d.is_ascii_alphanumeric() || d == '.')
            {
                chars.next();
            }
        }
    }
    names
}

/// Whether `name` is an exported family, or a histogram's series of one.
fn is_exported(name: &str, exported: &[&str]) -> bool {
    exported.contains(&name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|base| exported.contains(&base)))
}

fn panel_exprs(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
        panel_exprs(&panel["panels"], out);
    }
}

#[test]
fn the_dashboard_and_the_alerts_name_only_exported_metrics() {
    let exported = service::adapters::metrics::exported_names();
    assert!(exported.contains(&"shell_query_runs_total"), "{exported:?}");

    let dashboard: serde_json::Value = serde_json::from_str(&text("deploy/monitoring/dashboard.json"))
        .unwrap_or_else(|e| panic!("dashboard.json does not parse: {e}"));
    assert_eq!(dashboard["schemaVersion"], 39);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let panels = &dashboard["panels"];
    assert!(
        panels.as_array().is_some_and(|p| p.len() > 5),
        "the dashboard has panels"
    );
    let mut exprs = Vec::new();
    panel_exprs(panels, &mut exprs);
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    for panel in panels.as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}: the data source is the variable",
            panel["title"]
        );
    }
    let mut on_dashboard = BTreeSet::new();
    for (title, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(
                is_exported(&name, &exported),
                "dashboard panel {title:?} names {name}, which the service does not export"
            );
            on_dashboard.insert(name);
        }
    }
    let shown = |family: &str| {
        on_dashboard
            .iter()
            .any(|n| n == family || n.starts_with(&format!("{family}_")))
    };
    for family in [
        "shell_query_runs_total",
        "shell_query_run_duration_seconds",
        "shell_query_poll_ticks_total",
        "shell_query_poll_tick_duration_seconds",
        "shell_query_poll_tick_lateness_seconds",
        "shell_query_mce_calls_total",
        "shell_query_mce_call_duration_seconds",
        "shell_query_token_refreshes_total",
        "shell_query_dlq_messages_total",
        "shell_query_consumer_pending",
        "shell_query_reconciler_last_success_timestamp_seconds",
        "shell_query_sweeper_last_success_timestamp_seconds",
        "shell_query_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(shown(family), "the dashboard shows {family}");
    }

    let alerts = yaml("deploy/monitoring/alerts.yaml");
    let mut in_alerts = BTreeSet::new();
    let mut count = 0;
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("alerting rules only");
            let expr = rule["expr"].as_str().unwrap();
            count += 1;
            assert!(rule["for"].is_string(), "{name} has a `for:`");
            assert!(rule["labels"]["severity"].is_string(), "{name} has a severity");
            for key in ["summary", "description", "runbook"] {
                assert!(rule["annotations"][key].is_string(), "{name} has a {key}");
            }
            for metric in metric_names(expr) {
                assert!(
                    is_exported(&metric, &exported),
                    "alert {name} names {metric}, which the service does not export"
                );
                in_alerts.insert(metric);
            }
        }
    }
    assert!(count >= 8, "{count} alerts");
    // The families the alerts are about, each exported and each alerted on.
    for family in [
        "shell_query_dlq_messages_total",
        "shell_query_token_refreshes_total",
        "shell_query_mce_calls_total",
        "shell_query_consumer_pending",
        "shell_query_reconciler_last_success_timestamp_seconds",
        "shell_query_sweeper_last_success_timestamp_seconds",
        "shell_query_poll_tick_lateness_seconds",
    ] {
        assert!(exported.contains(&family), "{family} is exported");
        assert!(
            in_alerts
                .iter()
                .any(|n| n == family || n.starts_with(&format!("{family}_"))),
            "an alert watches {family}"
        );
    }
    let alerts_text = text("deploy/monitoring/alerts.yaml");
    assert!(
        alerts_text.contains("up{job="),
        "an alert watches the scrape target itself"
    );
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(shell_query_poll_tick_lateness_seconds_bucket{job=~"shell_query_x"}[5m]))) > 5e0 and process_open_fds"#,
    );
    assert_eq!(
        names,
        ["shell_query_poll_tick_lateness_seconds_bucket", "process_open_fds"]
    );
    let exported = ["shell_query_poll_tick_lateness_seconds", "process_open_fds"];
    assert!(names.iter().all(|n| is_exported(n, &exported)));
    assert!(!is_exported("shell_query_nope_total", &exported));
}

/// The image's build leaves the simulator and the demo out of the worker:
/// the Dockerfile turns the default `demo` feature off, and without it the
/// service's dependency tree holds no mce-sim.
#[test]
fn the_production_build_holds_no_simulator() {
    let dockerfile = text("Dockerfile");
    let build = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the Dockerfile builds with cargo");
    assert!(build.contains("--no-default-features"), "{build}");
    assert!(
        tests::dependency_tree("service", &[]).contains("mce-sim"),
        "the default build (cargo run, the tests) has the demo"
    );
    assert!(
        !tests::dependency_tree("service", &["--no-default-features"]).contains("mce-sim"),
        "the image's build has no simulator"
    );
}
