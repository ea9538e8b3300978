//! The watch/list query parser (`?watch=…&resourceVersion=…&fieldSelector=…`) on
//! arbitrary query strings: never a panic; a refusal is a Kubernetes `Status` with a
//! 4xx code.
#![no_main]

use kube_audit_stream::watch::{Query, is_watch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let watch = is_watch(Some(text));
    match Query::parse(Some(text)) {
        Ok(q) => assert_eq!(q.watch, watch, "{text:?}"),
        Err(e) => {
            let (code, _) = e.code_reason();
            assert!(code.is_client_error(), "{text:?}: {code}");
        }
    }
});
