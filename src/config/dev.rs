//! `--dev`: the embedded stand-alone preset's files (deploy/dev), built into the binary.

use crate::source::Source;

/// The `--dev` example token file (kube-apiserver's static token CSV).
pub const DEV_TOKENS: &str = include_str!("../../deploy/dev/tokens.csv");

/// The `--dev` example ABAC policy.
pub const DEV_POLICY: &str = include_str!("../../deploy/dev/abac-policy.jsonl");

pub(super) fn dev_policy() -> Source {
    Source::Embedded {
        name: "deploy/dev/abac-policy.jsonl (embedded)",
        text: DEV_POLICY,
    }
}
