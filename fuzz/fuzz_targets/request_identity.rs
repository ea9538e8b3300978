//! What a request says about who is asking and what it asks for, on arbitrary bytes:
//! the first line is `METHOD PATH[?QUERY]`, each further line a `name: value` header.
//! Checks the front-proxy identity against a model of kube-apiserver's requestheader
//! authenticator (first non-empty user, every non-empty group, extras under the
//! prefix), the bearer token extraction, and kube-apiserver's RequestInfo reading of
//! the path. Never a panic; never a user name that no user header carried.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use kube_audit_stream::authn::bearer_token;
use kube_audit_stream::authn::delegated::identity_from_headers;
use kube_audit_stream::authz::request_attributes;
use kube_audit_stream::watch::{is_watch, selected_name};
use libfuzzer_sys::fuzz_target;

fn names(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

/// Non-empty UTF-8 values of one header, in order.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let Ok(first) = std::str::from_utf8(first) else {
        return;
    };
    let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }

    if let Some(token) = bearer_token(&headers) {
        assert!(!token.is_empty() && !token.contains(' '), "{token:?}");
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .expect("a token has a header");
        assert!(
            auth.as_bytes()
                .windows(token.len())
                .any(|w| w == token.as_bytes())
        );
    }

    let user = identity_from_headers(
        &headers,
        &names(&["X-Remote-User", "X-Remote-User-2"]),
        &names(&["X-Remote-Group"]),
        &names(&["X-Remote-Extra-"]),
    );
    let mut model_users = values(&headers, "x-remote-user");
    model_users.extend(values(&headers, "x-remote-user-2"));
    match (&user, model_users.first()) {
        (Some(u), Some(first)) => {
            assert_eq!(&u.name, first);
            assert_eq!(u.groups, values(&headers, "x-remote-group"));
            let extra_values: usize = u.extra.values().map(Vec::len).sum();
            let extra_headers = headers
                .iter()
                .filter(|(n, v)| {
                    n.as_str().starts_with("x-remote-extra-")
                        && std::str::from_utf8(v.as_bytes()).is_ok()
                })
                .count();
            assert_eq!(extra_values, extra_headers);
        }
        (None, None) => {}
        (u, m) => panic!("identity {u:?}, model's user {m:?}"),
    }

    let attrs = request_attributes(
        method,
        path,
        is_watch(query),
        selected_name(query).as_deref(),
    );
    assert_eq!(attrs.path, path);
    if !attrs.namespace.is_empty() {
        let marker = format!("/namespaces/{}/", attrs.namespace);
        assert!(
            path.contains(&marker),
            "{path:?} → namespace {:?}",
            attrs.namespace
        );
    }
    // Leading slashes are trimmed, as kube-apiserver's splitPath does.
    if attrs.resource_request {
        assert!(
            path.trim_start_matches('/').starts_with("apis/"),
            "{path:?}"
        );
    }
});
