//! YAML documents as JSON values, converted by PyYAML: the crate has no YAML parser, and
//! the manifests and deploy tests only read what they check.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Every non-empty document of `yaml`; `origin` names it in failures.
pub fn docs(yaml: &str, origin: &str) -> Vec<Value> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout, default=str)";
    let mut child = Command::new("python3")
        .args(["-c", TO_JSON])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'yaml'"),
        "reading YAML needs PyYAML: pip install pyyaml (or kubernetes-validate, which CI installs)"
    );
    assert!(out.status.success(), "{origin}: not YAML: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}
