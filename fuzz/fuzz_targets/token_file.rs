//! The static token file parser (kube-apiserver's CSV: token,user,uid,"groups") on
//! arbitrary text: never a panic, and no file makes the empty token a credential (kube-apiserver
//! skips records without a token).
#![no_main]

use kube_audit_stream::authn::TokenFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = TokenFile::parse(text, "fuzz") else {
        return;
    };
    assert!(file.lookup("").is_none(), "an empty token authenticates");
});
