//! The command line as scripts use it: exit codes, messages, `schema list|show|check`.

mod common;

use common::bin;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn schema_list_names_every_kind() {
    let (code, out, _) = run(&["schema", "list"]);
    assert_eq!(code, 0);
    for kind in [
        "rsm_participant",
        "bsm",
        "spat_phase",
        "rsi_event",
        "radar_target",
        "vehicle_state",
        "vehicle_object",
        "device_status",
    ] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
    assert!(out.contains("dawnline"));
}

#[test]
fn schema_show_prints_units() {
    let (code, out, _) = run(&["schema", "show", "bsm"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "speed_mps" && c["unit"] == "m/s")
    );
    let (code, _, err) = run(&["schema", "show", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("schema list"), "{err}");
}

#[test]
fn schema_check_validates_a_vendor_file() {
    let track = common::shared("openv2x-radar/track.json");
    let (code, out, _) = run(&[
        "schema",
        "check",
        "--kind",
        "radar_target",
        "--array",
        "--show",
        "2",
        track.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("500 payloads, 500 filed as 11165 rows, 0 quarantined"),
        "{out}"
    );
    let rsm = common::shared("openv2x-payloads/derived_rsm_std_payloads.ndjson");
    let (code, out, _) = run(&[
        "schema",
        "check",
        "--kind",
        "rsm_participant",
        "--ndjson",
        rsm.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("9 filed as 358 rows"), "{out}");
    // The same file read as the wrong kind: quarantined with a reason, exit 1.
    let (code, out, _) = run(&[
        "schema",
        "check",
        "--kind",
        "radar_target",
        "--ndjson",
        rsm.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("quarantined"), "{out}");
}

#[test]
fn bad_configuration_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "datadir = 'x'\n").unwrap();
    let (code, _, err) = run(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field"), "{err}");
    let (code, _, err) = run(&[
        "run",
        "--broker",
        "http://example",
        "--data",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("mqtt://host:port"), "{err}");
    let (code, _, err) = run(&["run", "--collector-id", "../x"]);
    assert_eq!(code, 2);
    assert!(err.contains("collector_id"), "{err}");
    let (code, _, _) = run(&["run", "--no-such-flag"]);
    assert_eq!(code, 2);
}

#[test]
fn embedded_broker_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&[
        "run",
        "--listen",
        &addr,
        "--data",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot listen"), "{err}");
}

/// Every configuration key is documented in the README's configuration reference.
#[test]
fn readme_documents_every_config_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let defaults = toml::to_string(&v2x_collector::config::Config::default()).unwrap();
    let table: toml::Table = toml::from_str(&defaults).unwrap();
    let mut missing = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(t) => {
                for sub in t.keys() {
                    let name = format!("{key}.{sub}");
                    if !readme.contains(&format!("`{name}`")) {
                        missing.push(name);
                    }
                }
            }
            _ => {
                if !readme.contains(&format!("`{key}`")) {
                    missing.push(key.clone());
                }
            }
        }
    }
    // Options that are unset by default do not appear in the serialized defaults.
    for name in [
        "schema_dir",
        "mqtt.broker",
        "mqtt.client_id",
        "mqtt.username",
        "mqtt.password",
        "embedded.listen_v5",
        "time.max_past_skew_s",
        "http.token",
        "mqtt.shared_group",
        "store.url",
        "store.endpoint",
        "store.region",
        "store.access_key_id",
        "store.secret_access_key",
        "mqtt.tls.ca_file",
        "mqtt.tls.cert_file",
        "mqtt.tls.key_file",
        "mqtt.tls.server_name",
        "http.tls.cert_file",
        "http.tls.key_file",
    ] {
        if !readme.contains(&format!("`{name}`")) {
            missing.push(name.to_string());
        }
    }
    assert!(missing.is_empty(), "README lacks: {missing:?}");
}

#[test]
fn example_configuration_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/collector.example.toml");
    let c = v2x_collector::config::Config::load(Some(std::path::Path::new(path))).unwrap();
    c.validate().unwrap();
    assert_eq!(c.collector_id, "edge-01");
}

/// The collector.toml of the compose stack and of the Kubernetes ConfigMap load and validate,
/// so the deploy files cannot drift from the configuration structs.
#[test]
fn deploy_configurations_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = root.join("deploy/compose/collector.toml");
    let c = v2x_collector::config::Config::load(Some(&compose)).unwrap();
    c.validate().unwrap();
    assert!(
        c.store.url.is_some(),
        "the compose stack writes to its S3 store"
    );

    let yaml = std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).unwrap();
    let toml: String = yaml
        .lines()
        .skip_while(|l| l.trim() != "collector.toml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(
        toml.contains("[mqtt]"),
        "no collector.toml in the ConfigMap"
    );
    let c: v2x_collector::config::Config = toml::from_str(&toml).unwrap();
    c.validate().unwrap();
    assert!(
        c.mqtt.shared_group.is_some(),
        "replicas share the subscription"
    );
}

#[test]
fn schema_docs_match_schemas_readme() {
    let out = bin()
        .args(["schema", "docs"])
        .env_remove("V2X_SCHEMA_DIR")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/README.md");
    let committed = std::fs::read(&readme).unwrap_or_default();
    assert!(
        out.stdout == committed,
        "schemas/README.md is out of date with the schema files; regenerate it with\n    \
         cargo run -- schema docs > schemas/README.md\nand commit the result"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (code, _, err) = run(&["schema", "docs", "--schema-dir", missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("missing"), "{err}");
    std::fs::write(dir.path().join("bad.toml"), "kind = 'x'\n").unwrap();
    let (code, _, err) = run(&[
        "schema",
        "docs",
        "--schema-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml"), "{err}");
}
