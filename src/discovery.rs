//! The discovery documents of `audit.k8s.io/v1alpha1` (`/apis`, `/apis/audit.k8s.io`,
//! `/apis/audit.k8s.io/v1alpha1`, and aggregated discovery), serialised once at start.
//! The resource names here are the ones the router, the manifests and RBAC must agree on.

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery, ObjectMeta,
};
use kube_core::discovery::v2 as agg;
use serde::Serialize;

use crate::event::{API_GROUP, API_VERSION, GROUP_VERSION, KIND};

/// Cluster-wide resource: every event.
pub const EVENTS: &str = "events";
/// Namespaced resource: the events whose `objectRef.namespace` is the namespace.
pub const NAMESPACED_EVENTS: &str = "namespacedevents";
/// Cluster-wide resource: one object per pusher identity (`kind: Source`), read-only.
pub const SOURCES: &str = "sources";
/// The kind of `sources`' objects.
pub const SOURCE_KIND: &str = "Source";
/// Verbs served on every resource.
pub const VERBS: [&str; 3] = ["get", "list", "watch"];

const JSON: &str = "application/json";

/// The kind discovery names for `namespacedevents`. Its objects are `Event`s like those of
/// `events`, but kubectl maps a resource to its kind and the kind back to one resource,
/// so two resources of one kind in one group version are one resource to kubectl
/// (`kubectl get events.audit.k8s.io` would list `namespacedevents`). A kind of its own
/// in discovery keeps them apart.
pub const NAMESPACED_KIND: &str = "NamespacedEvent";

/// The resources we serve: (name, singular, namespaced, kind in discovery).
const RESOURCES: [(&str, &str, bool, &str); 3] = [
    (EVENTS, "event", false, KIND),
    (NAMESPACED_EVENTS, "namespacedevent", true, NAMESPACED_KIND),
    (SOURCES, "source", false, SOURCE_KIND),
];

/// Pre-serialised documents.
#[derive(Debug, Clone)]
pub struct Discovery {
    group_list: Bytes,
    group: Bytes,
    resource_list: Bytes,
    aggregated: [(String, Bytes); 2],
}

/// One answer: content type and body.
pub struct Document {
    pub content_type: String,
    pub body: Bytes,
}

impl Default for Discovery {
    fn default() -> Self {
        Self::new()
    }
}

impl Discovery {
    pub fn new() -> Self {
        let group = api_group();
        let group_list = APIGroupList {
            groups: vec![group.clone()],
        };
        let resource_list = APIResourceList {
            group_version: GROUP_VERSION.to_owned(),
            resources: RESOURCES
                .iter()
                .map(|(name, singular, namespaced, kind)| APIResource {
                    name: (*name).to_owned(),
                    singular_name: (*singular).to_owned(),
                    namespaced: *namespaced,
                    kind: (*kind).to_owned(),
                    verbs: VERBS.iter().map(|v| (*v).to_owned()).collect(),
                    ..Default::default()
                })
                .collect(),
        };
        let aggregated = ["v2", "v2beta1"].map(|v| {
            (
                format!("{JSON};g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"),
                to_bytes(&aggregated_list(v)),
            )
        });
        Discovery {
            group_list: to_bytes(&group_list),
            group: to_bytes(&group),
            resource_list: to_bytes(&resource_list),
            aggregated,
        }
    }

    /// The document for `path`, negotiated by the `Accept` header; `None` if the path is
    /// not a discovery path.
    pub fn document(&self, path: &str, accept: Option<&str>) -> Option<Document> {
        let json = |body: &Bytes| Document {
            content_type: JSON.to_owned(),
            body: body.clone(),
        };
        match path.trim_end_matches('/') {
            "/apis" => Some(match aggregated_version(accept.unwrap_or_default()) {
                Some(i) => Document {
                    content_type: self.aggregated[i].0.clone(),
                    body: self.aggregated[i].1.clone(),
                },
                None => json(&self.group_list),
            }),
            p if p == format!("/apis/{API_GROUP}") => Some(json(&self.group)),
            p if p == format!("/apis/{GROUP_VERSION}") => Some(json(&self.resource_list)),
            _ => None,
        }
    }
}

fn api_group() -> APIGroup {
    let version = GroupVersionForDiscovery {
        group_version: GROUP_VERSION.to_owned(),
        version: API_VERSION.to_owned(),
    };
    APIGroup {
        name: API_GROUP.to_owned(),
        preferred_version: Some(version.clone()),
        server_address_by_client_cidrs: None,
        versions: vec![version],
    }
}

/// `apidiscovery.k8s.io` types carry no apiVersion/kind of their own in kube-core.
#[derive(Serialize)]
struct Typed<T> {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: &'static str,
    #[serde(flatten)]
    inner: T,
}

fn aggregated_list(version: &str) -> Typed<agg::APIGroupDiscoveryList> {
    let resources = RESOURCES
        .iter()
        .map(
            |(name, singular, namespaced, kind)| agg::APIResourceDiscovery {
                resource: Some((*name).to_owned()),
                response_kind: Some(agg::GroupVersionKind {
                    group: Some(API_GROUP.to_owned()),
                    version: Some(API_VERSION.to_owned()),
                    kind: Some((*kind).to_owned()),
                }),
                scope: Some(if *namespaced { "Namespaced" } else { "Cluster" }.to_owned()),
                singular_resource: Some((*singular).to_owned()),
                verbs: VERBS.iter().map(|v| (*v).to_owned()).collect(),
                ..Default::default()
            },
        )
        .collect();
    Typed {
        api_version: format!("apidiscovery.k8s.io/{version}"),
        kind: "APIGroupDiscoveryList",
        inner: agg::APIGroupDiscoveryList {
            metadata: None,
            items: vec![agg::APIGroupDiscovery {
                metadata: Some(ObjectMeta {
                    name: Some(API_GROUP.to_owned()),
                    ..Default::default()
                }),
                versions: vec![agg::APIVersionDiscovery {
                    version: Some(API_VERSION.to_owned()),
                    resources,
                    freshness: Some("Current".to_owned()),
                }],
            }],
        },
    }
}

fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    // These documents are built from constants; serialising them cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Which aggregated form (0: v2, 1: v2beta1) the client asks for first, if any: media
/// ranges are taken in the client's order, as kube-apiserver's negotiation does for the
/// ranges it supports.
fn aggregated_version(accept: &str) -> Option<usize> {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let (mut g, mut v, mut as_) = ("", "", "");
        for p in parts {
            match p.split_once('=') {
                Some(("g", x)) => g = x,
                Some(("v", x)) => v = x,
                Some(("as", x)) => as_ = x,
                _ => {}
            }
        }
        if media == JSON && g == "apidiscovery.k8s.io" && as_ == "APIGroupDiscoveryList" {
            match v {
                "v2" => return Some(0),
                "v2beta1" => return Some(1),
                _ => continue,
            }
        }
        if g.is_empty() && (media == JSON || media == "*/*" || media == "application/*") {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn legacy_documents() {
        let d = Discovery::new();
        let list = json(&d.document("/apis", None).unwrap().body);
        assert_eq!(list["kind"], "APIGroupList");
        assert_eq!(list["groups"][0]["name"], "audit.k8s.io");
        assert_eq!(
            list["groups"][0]["preferredVersion"]["groupVersion"],
            "audit.k8s.io/v1alpha1"
        );
        let group = json(&d.document("/apis/audit.k8s.io/", None).unwrap().body);
        assert_eq!(group["kind"], "APIGroup");
        let res = json(
            &d.document("/apis/audit.k8s.io/v1alpha1", None)
                .unwrap()
                .body,
        );
        assert_eq!(res["kind"], "APIResourceList");
        assert_eq!(res["resources"][0]["name"], "events");
        assert_eq!(res["resources"][0]["namespaced"], false);
        assert_eq!(res["resources"][1]["name"], "namespacedevents");
        assert_eq!(res["resources"][1]["namespaced"], true);
        assert_eq!(res["resources"][2]["name"], "sources");
        assert_eq!(res["resources"][2]["kind"], "Source");
        assert_eq!(res["resources"][2]["namespaced"], false);
        assert_eq!(
            res["resources"][1]["verbs"],
            serde_json::json!(["get", "list", "watch"])
        );
        assert!(d.document("/apis/other", None).is_none());
    }

    #[test]
    fn aggregated_by_accept_header() {
        let d = Discovery::new();
        let doc = d
            .document(
                "/apis",
                Some(kube_core::discovery::v2::ACCEPT_AGGREGATED_DISCOVERY_V2),
            )
            .unwrap();
        assert_eq!(
            doc.content_type,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
        let v = json(&doc.body);
        assert_eq!(v["apiVersion"], "apidiscovery.k8s.io/v2");
        assert_eq!(v["kind"], "APIGroupDiscoveryList");
        assert_eq!(v["items"][0]["metadata"]["name"], "audit.k8s.io");
        assert_eq!(
            v["items"][0]["versions"][0]["resources"][1]["scope"],
            "Namespaced"
        );
        // Parsed back into kube-core's own types.
        let parsed: agg::APIGroupDiscoveryList = serde_json::from_slice(&doc.body).unwrap();
        assert_eq!(parsed.items[0].versions[0].resources.len(), 3);

        let beta = d
            .document("/apis", Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"))
            .unwrap();
        assert_eq!(
            json(&beta.body)["apiVersion"],
            "apidiscovery.k8s.io/v2beta1"
        );
        let plain = d.document("/apis", Some("application/json, */*")).unwrap();
        assert_eq!(plain.content_type, "application/json");
        assert_eq!(json(&plain.body)["kind"], "APIGroupList");
    }
}
