//! kube-apiserver's `RequestInfo`: what a request asks for, read from its method, path
//! and query (whether it is a watch, the name its field selector requires), as
//! authorization `Attributes` (the user is filled in by the router once authenticated).

use super::Attributes;

/// kube-apiserver's `RequestInfo`, as authorization `Attributes` (user left empty).
/// `method` is the HTTP method's name (the router passes it; authz stays free of HTTP
/// types); `watch`, whether the query says `watch=1`. As kube-apiserver reads them:
///
/// * A GET of a collection is a `list`, or a `watch` with `watch=1`; a GET of a named
///   path is a `get` whatever its query says (kube-apiserver answers `…/NAME?watch=1`
///   with the object).
/// * `selected_name`: the name the request's `fieldSelector` requires
///   (`metadata.name=NAME`), if it parses and has one. A LIST or WATCH of a collection
///   with it is authorized with that name, so that an authorizer that grants single
///   names (RBAC `resourceNames`) sees a watch of one event (`kubectl get NAME -w`
///   sends the selector) as one of that name.
/// * `/apis/G/V/watch/…` (kube-apiserver's deprecated verb-in-path form, its only
///   watch of a named path) is a `watch` of what follows, the name from the path; its
///   selector names nothing, as in kube-apiserver.
pub fn request_attributes(
    method: &str,
    path: &str,
    watch: bool,
    selected_name: Option<&str>,
) -> Attributes {
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
    let (rest, verb_in_path) = match rest {
        ["watch", tail @ ..] if !tail.is_empty() => (tail, true),
        _ => (rest, false),
    };
    let (namespace, parts): (&str, &[&str]) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (ns, tail),
        _ => ("", rest),
    };
    let resource = parts.first().copied().unwrap_or_default();
    let name = parts.get(1).copied().unwrap_or_default();
    let subresource = parts.get(2).copied().unwrap_or_default();
    let verb = match method {
        _ if verb_in_path => "watch",
        "GET" | "HEAD" if name.is_empty() && watch => "watch",
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
    // Only a GET of a collection takes its name from the selector, and only a name that
    // could be a path segment (kube-apiserver's `IsValidPathSegmentName`).
    let name = match selected_name {
        Some(selected)
            if name.is_empty()
                && !verb_in_path
                && matches!(verb, "list" | "watch")
                && valid_path_segment(selected) =>
        {
            selected
        }
        _ => name,
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

/// kube-apiserver's `path.IsValidPathSegmentName`.
fn valid_path_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::Method;

    fn attrs(method: Method, path: &str, query: Option<&str>) -> Attributes {
        request_attributes(method.as_str(), path, query == Some("watch=1"), None)
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

        // A collection read with `fieldSelector=metadata.name=NAME` is authorized with
        // the name; a named path keeps its own; other verbs and bad names take none.
        // A named path is a get even with watch=1; `/watch/` is the named watch.
        let team_a = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents";
        let named = format!("{team_a}/y-get");
        let watch_named =
            "/apis/audit.k8s.io/v1alpha1/watch/namespaces/team-a/namespacedevents/y-get";
        let watch_all = "/apis/audit.k8s.io/v1alpha1/watch/namespaces/team-a/namespacedevents";
        for (method, path, watch, selected, verb, name) in [
            ("GET", team_a, true, Some("x-get"), "watch", "x-get"),
            ("GET", team_a, false, Some("x-get"), "list", "x-get"),
            ("GET", &named, true, Some("x-get"), "get", "y-get"),
            ("GET", &named, false, None, "get", "y-get"),
            (
                "DELETE",
                team_a,
                false,
                Some("x-get"),
                "deletecollection",
                "",
            ),
            ("GET", team_a, true, Some(".."), "watch", ""),
            ("GET", team_a, true, Some("a/b"), "watch", ""),
            ("GET", team_a, true, Some("a%2F"), "watch", ""),
            ("GET", watch_named, false, Some("x-get"), "watch", "y-get"),
            ("GET", watch_all, false, Some("x-get"), "watch", ""),
        ] {
            let a = request_attributes(method, path, watch, selected);
            assert_eq!(
                (a.verb.as_str(), a.name.as_str()),
                (verb, name),
                "{method} {path} {selected:?}"
            );
            assert_eq!(
                (a.namespace.as_str(), a.resource.as_str()),
                ("team-a", "namespacedevents"),
                "{path}"
            );
        }

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
