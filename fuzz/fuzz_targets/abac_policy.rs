//! The ABAC policy parser (kube-apiserver's JSON-lines format) on arbitrary text: never
//! a panic, and a policy that loads answers for any request without one.
#![no_main]

use futures_util::FutureExt;
use kube_audit_stream::authn::UserInfo;
use kube_audit_stream::authz::{Abac, Authorizer, request_attributes};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(abac) = Abac::parse(text, "fuzz") else {
        return;
    };
    for (method, path, watch) in [
        (
            "GET",
            "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents",
            true,
        ),
        ("GET", "/apis/audit.k8s.io/v1alpha1/events", false),
        ("GET", "/metrics", false),
    ] {
        let mut attrs = request_attributes(method, path, watch, None);
        attrs.user = Arc::new(UserInfo::new("alice", &["devs", "system:authenticated"]));
        let decision = abac
            .authorize(&attrs)
            .now_or_never()
            .expect("ABAC answers without waiting");
        decision.expect("ABAC never fails once loaded");
    }
});
