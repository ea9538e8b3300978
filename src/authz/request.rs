//! kube-apiserver's `RequestInfo`: what a request asks for, read from its method, path
//! and whether it is a watch, as authorization `Attributes` (the user is filled in by
//! the router once authenticated).

use super::Attributes;

/// kube-apiserver's `RequestInfo`, as authorization `Attributes` (user left empty).
/// `method` is the HTTP method's name (the router passes it; authz stays free of HTTP
/// types).
pub fn request_attributes(method: &str, path: &str, watch: bool) -> Attributes {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let non_resource = || Attributes {
        verb: method.to_ascii_lowercase(),
        path: path.to_owned(),
        ..Default::default()
    };
    // /apis/{group}/{version}/{...}; shorter /apis paths are discovery.
    let ["apis", group, version, rest @ ..] = segments.as_slice() else {
        return non_resource();
    };
    if rest.is_empty() || rest == [""] {
        return non_resource();
    }
    let (namespace, parts): (&str, &[&str]) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (ns, tail),
        _ => ("", rest),
    };
    let resource = parts.first().copied().unwrap_or_default();
    let name = parts.get(1).copied().unwrap_or_default();
    let subresource = parts.get(2).copied().unwrap_or_default();
    let verb = match method {
        "GET" | "HEAD" if watch => "watch",
        "GET" | "HEAD" if name.is_empty() => "list",
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if name.is_empty() => "deletecollection",
        "DELETE" => "delete",
        _ => {
            return Attributes {
                resource_request: true,
                ..non_resource()
            };
        }
    };
    Attributes {
        verb: verb.to_owned(),
        namespace: namespace.to_owned(),
        api_group: (*group).to_owned(),
        api_version: (*version).to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        name: name.to_owned(),
        resource_request: true,
        path: path.to_owned(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::Method;

    fn attrs(method: Method, path: &str, query: Option<&str>) -> Attributes {
        request_attributes(method.as_str(), path, query == Some("watch=1"))
    }

    #[test]
    fn request_info_like_kube_apiserver() {
        let a = attrs(
            Method::GET,
            "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents",
            Some("watch=1"),
        );
        assert!(a.resource_request);
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("watch", "team-a", "namespacedevents")
        );
        assert_eq!(
            (a.api_group.as_str(), a.api_version.as_str()),
            ("audit.k8s.io", "v1alpha1")
        );

        let a = attrs(Method::GET, "/apis/audit.k8s.io/v1alpha1/events", None);
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("list", "", "events")
        );
        let a = attrs(Method::GET, "/apis/audit.k8s.io/v1alpha1/events/x", None);
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("get", "x"));
        let a = attrs(
            Method::DELETE,
            "/apis/audit.k8s.io/v1alpha1/namespaces/ns/namespacedevents",
            None,
        );
        assert_eq!(a.verb, "deletecollection");
        let a = attrs(Method::POST, "/apis/audit.k8s.io/v1alpha1/events", None);
        assert_eq!(a.verb, "create");
        // `namespaces/{ns}` alone names the namespace object, as kube-apiserver reads it.
        let a = attrs(
            Method::GET,
            "/apis/audit.k8s.io/v1alpha1/namespaces/ns",
            None,
        );
        assert_eq!((a.resource.as_str(), a.name.as_str()), ("namespaces", "ns"));

        for p in [
            "/apis",
            "/apis/audit.k8s.io",
            "/apis/audit.k8s.io/v1alpha1",
            "/apis/audit.k8s.io/v1alpha1/",
            "/metrics",
            "/",
        ] {
            let a = attrs(Method::GET, p, None);
            assert!(!a.resource_request, "{p}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", p));
        }
    }
}
