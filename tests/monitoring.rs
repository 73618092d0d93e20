//! The monitoring kit in docs/monitoring stays true: every metric its alert rules and its
//! dashboard name exists in the `/metrics` of a running appliance (control and relay), and
//! `promtool` accepts the rules and passes their unit tests.

use sluice_tests::daemons::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn kit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring")
}

/// Metric names in a PromQL-bearing text: `sluice_…` and `process_…` identifiers.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = (rest.starts_with("sluice_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

/// The PromQL expressions of the dashboard.
fn dashboard_exprs() -> String {
    let text = std::fs::read_to_string(kit().join("dashboard.json")).expect("dashboard.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    let mut exprs = String::new();
    for p in v["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    exprs.push_str(v["templating"]["list"][1]["query"].as_str().unwrap_or(""));
    exprs
}

#[test]
fn every_metric_the_kit_names_exists() {
    let mut app = Appliance::new("monitoring", "mmsg", RuntimeDir::InConfig);
    let info = app.start_control();
    app.start_relay();
    let (code, body) = http_get(&info.metrics_url, None);
    assert_eq!(code, 200, "{body}");
    let m = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let rules = std::fs::read_to_string(kit().join("alerts.yml")).expect("alerts.yml");
    let mut named = metric_names(&rules);
    named.extend(metric_names(&dashboard_exprs()));
    assert!(named.len() >= 20, "{named:?}");
    for name in &named {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| m.types.get(*f).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        assert!(
            m.types.contains_key(family),
            "the kit names {name}, which /metrics does not have"
        );
    }
    // Both daemons' process figures and the build.
    for p in ["control", "relay"] {
        assert!(
            m.value("process_resident_memory_bytes", &[("process", p)])
                .is_some_and(|v| v > 0.0),
            "no memory figure for {p}"
        );
    }
    assert_eq!(
        m.value(
            "sluice_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_tests() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_REQUIRE_PEERS is set but promtool is missing"
        );
        sluice_tests::skip::skip("promtool not installed (apt-get install prometheus)");
        return;
    };
    assert!(out.status.success());
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let o = std::process::Command::new("promtool")
            .args(args)
            .current_dir(kit())
            .output()
            .expect("run promtool");
        assert!(
            o.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
