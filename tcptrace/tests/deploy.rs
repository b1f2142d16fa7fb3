//! The files in deploy/ are code too: promtool checks the rules and runs their unit tests,
//! and the Grafana dashboard must parse with a query and a data source on every panel. (That
//! every query returns data from a real `tcptrace serve` is the root test `serve`.)

use std::{path::PathBuf, process::Command};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed by this test ({e}): install it with \
                 `cargo xtask setup --test-packages` (Debian package prometheus)"
            )
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}: {said}", args.join(" "));
    said
}

#[test]
fn prometheus_rules_check_and_their_unit_tests_pass() {
    let said = promtool(&["check", "rules", "tcptrace-rules.yml"]);
    assert!(said.contains("SUCCESS: 10 rules found"), "{said}");
    let said = promtool(&["test", "rules", "tcptrace-rules_test.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn prometheus_scrape_config_checks() {
    promtool(&["check", "config", "prometheus.yml"]);
}

#[test]
fn every_dashboard_panel_has_a_query_and_a_data_source() {
    let text = std::fs::read_to_string(deploy().join("grafana/tcptrace.json")).expect("dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().expect("expr");
            assert!(e.contains("tcptrace_"), "{e}");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}
