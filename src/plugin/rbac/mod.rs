//! `kubectl audit rbac`'s policy: from one user's audit events to the least RBAC that
//! allows every request they made (a `Role` per namespace, a `ClusterRole` for
//! cluster-scoped requests and non-resource URLs, and the bindings of both), printed as
//! YAML for `kubectl apply -f -`, with the requests that were denied listed as comments.
//! Pure: events in, objects and text out; reading the server is `mod.rs`'s job.
//!
//! The shape is liggitt/audit2rbac's (`audit2rbac:<user>` objects labelled
//! `audit2rbac.liggitt.net/user` and `…/generated: "true"`; rules grouped by API group
//! and resource, `resource/subresource`, verbs sorted; `get`/`list`/`watch` and
//! `update`/`patch` widened as it widens them; an impersonated user's requests are theirs;
//! every stage of every event counts; discovery paths every user may already read are left
//! out), so its users recognise it. Where this differs, on purpose:
//! - No namespace widening: a request made in two namespaces gives a `Role` in each, not a
//!   `ClusterRole` (audit2rbac's `--expand-multi-namespace`, on by default, grants every
//!   namespace). Least privilege is the point, and the namespaces are known.
//! - Resource names only with `--resource-names`, and then every name used (audit2rbac keeps
//!   a name used alone and drops names used several times: `--expand-multi-name`).
//! - A rule already granted by a broader one (a name by the nameless rule, a namespace by
//!   the `ClusterRole`) is left out verb by verb, not request by request, and
//!   non-resource URLs with the same verbs share a rule: fewer, equivalent rules.
//! - A non-resource URL is matched without its query (`/metrics?x` is `/metrics` to the
//!   authorizer); a discovery path that was denied is granted (the cluster does not give
//!   it to this user).
//! - Label values are cut to 63 characters (the API refuses longer), and there is no
//!   `audit2rbac.liggitt.net/version` annotation: this is not audit2rbac.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::escape::escape_terminal;

/// The label naming the user a policy is for (audit2rbac's, so tools that know its output
/// find ours).
pub const USER_LABEL: &str = "audit2rbac.liggitt.net/user";
/// The label marking generated objects.
pub const GENERATED_LABEL: &str = "audit2rbac.liggitt.net/generated";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// kube-apiserver's annotation of an authorizer's decision on the request.
const DECISION_ANNOTATION: &str = "authorization.k8s.io/decision";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// A request's verb, and the verbs granted with it: what its client will want next
/// (a `list` is followed by a `watch`, a `get` before an `update`), as audit2rbac grants.
fn widened(verb: &str) -> &'static [&'static str] {
    match verb {
        "watch" => &["get", "list"],
        "list" => &["get", "watch"],
        "update" => &["get", "patch"],
        "patch" => &["get", "update"],
        _ => &[],
    }
}

/// What every authenticated user may `get` in a default cluster (the `system:discovery`
/// ClusterRole as audit2rbac assumes it): not worth a rule unless it was denied.
fn discovery(path: &str) -> bool {
    ["/healthz", "/version"].contains(&path)
        || ["/swagger", "/openapi", "/api"]
            .iter()
            .any(|p| path.starts_with(p))
}

/// Which events, and how the policy is made.
#[derive(Debug, Clone)]
pub struct Options {
    /// The user (`user.username`, or `impersonatedUser.username` when set: the identity
    /// the request was authorized as).
    pub user: String,
    /// Only the requests in this namespace (cluster-scoped ones and non-resource URLs are
    /// left out), as audit2rbac's `-n`.
    pub namespace: Option<String>,
    /// Keep `resourceNames`.
    pub resource_names: bool,
}

/// One request as the authorizer saw it; the same request made twice is one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Request {
    Resource {
        /// Empty: cluster-scoped (or every namespace).
        namespace: String,
        group: String,
        /// `resource` or `resource/subresource`.
        resource: String,
        /// Empty: none (a `list`, a `create`).
        name: String,
        verb: String,
    },
    NonResource {
        path: String,
        verb: String,
    },
}

/// The fields of an audit event the policy reads (every `audit.k8s.io` version has them).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Event {
    verb: String,
    #[serde(rename = "requestURI")]
    request_uri: String,
    user: UserInfo,
    impersonated_user: Option<UserInfo>,
    object_ref: Option<ObjectRef>,
    response_status: Option<ResponseStatus>,
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UserInfo {
    username: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ObjectRef {
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
    api_group: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResponseStatus {
    code: Option<i64>,
}

/// The requests of one user seen so far; `policy` makes the objects.
#[derive(Debug)]
pub struct Builder {
    options: Options,
    requests: BTreeSet<Request>,
    denied: BTreeSet<Request>,
    /// Events of the user taken (every stage), for messages.
    events: u64,
}

impl Builder {
    pub fn new(options: Options) -> Builder {
        Builder {
            options,
            requests: BTreeSet::new(),
            denied: BTreeSet::new(),
            events: 0,
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Events of the user taken so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Take one audit event (its JSON). `Ok(true)` when it is a request not seen before, or
    /// a denial not seen before: the policy, or its comments, grew.
    pub fn add(&mut self, raw: &str) -> Result<bool, serde_json::Error> {
        let event: Event = serde_json::from_str(raw)?;
        let user = event.impersonated_user.as_ref().unwrap_or(&event.user);
        if user.username != self.options.user || event.verb.is_empty() {
            return Ok(false);
        }
        let request = match &event.object_ref {
            Some(o) if !o.resource.is_empty() => {
                let resource = match o.subresource.as_str() {
                    "" => o.resource.clone(),
                    sub => format!("{}/{sub}", o.resource),
                };
                Request::Resource {
                    namespace: o.namespace.clone(),
                    group: o.api_group.clone(),
                    resource,
                    // A create is authorized before its object, and so its name, exists
                    // (audit events of accepted creates carry the name all the same).
                    name: if event.verb == "create" {
                        String::new()
                    } else {
                        o.name.clone()
                    },
                    verb: event.verb.clone(),
                }
            }
            _ => Request::NonResource {
                // The authorizer matches the path alone.
                path: event
                    .request_uri
                    .split(['?', '#'])
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                verb: event.verb.clone(),
            },
        };
        if let Some(ns) = &self.options.namespace
            && !matches!(&request, Request::Resource { namespace, .. } if namespace == ns)
        {
            return Ok(false);
        }
        self.events += 1;
        let denied = event.response_status.and_then(|s| s.code) == Some(403)
            || event
                .annotations
                .get(DECISION_ANNOTATION)
                .is_some_and(|d| d == "forbid");
        let mut grew = false;
        if denied {
            grew |= self.denied.insert(request.clone());
        }
        grew |= self.requests.insert(request);
        Ok(grew)
    }

    /// The least policy that allows every request taken.
    pub fn policy(&self) -> Policy {
        let resource_names = self.options.resource_names;
        // Every (scope, group, resource, name, verb) the requests need.
        let mut resource_atoms: BTreeSet<(&str, &str, &str, &str, &str)> = BTreeSet::new();
        let mut url_atoms: BTreeSet<(&str, &str)> = BTreeSet::new();
        for r in &self.requests {
            match r {
                Request::Resource {
                    namespace,
                    group,
                    resource,
                    name,
                    verb,
                } => {
                    let name = if resource_names { name.as_str() } else { "" };
                    for v in std::iter::once(verb.as_str()).chain(widened(verb).iter().copied()) {
                        resource_atoms.insert((namespace, group, resource, name, v));
                    }
                }
                Request::NonResource { path, verb } => {
                    if verb == "get" && discovery(path) && !self.denied.contains(r) {
                        continue;
                    }
                    url_atoms.insert((path, verb));
                }
            }
        }
        // Left out: what a broader atom grants already. A ClusterRole bound by a
        // ClusterRoleBinding grants in every namespace; a rule without names, every name.
        let covered = |&(ns, g, r, n, v): &(&str, &str, &str, &str, &str)| {
            let broader = [("", g, r, n, v), (ns, g, r, "", v), ("", g, r, "", v)];
            broader
                .iter()
                .any(|b| b != &(ns, g, r, n, v) && resource_atoms.contains(b))
        };
        // Per scope: (group, resource, name) → verbs.
        let mut scopes: BTreeMap<&str, Grants<'_>> = BTreeMap::new();
        for atom in resource_atoms.iter().filter(|a| !covered(a)) {
            let (ns, g, r, n, v) = *atom;
            scopes
                .entry(ns)
                .or_default()
                .entry((g, r, n))
                .or_default()
                .insert(v);
        }
        let mut cluster_rules = scopes.remove("").map(compact).unwrap_or_default();
        cluster_rules.extend(url_rules(&url_atoms));

        let name = object_name(&self.options.user);
        let meta = |namespace: Option<&str>| ObjectMeta {
            name: Some(name.clone()),
            namespace: namespace.map(str::to_owned),
            labels: Some(BTreeMap::from([
                (GENERATED_LABEL.to_owned(), "true".to_owned()),
                (USER_LABEL.to_owned(), label_value(&self.options.user)),
            ])),
            ..Default::default()
        };
        let subject = subject(&self.options.user);
        let role_ref = |kind: &str| RoleRef {
            api_group: RBAC_GROUP.to_owned(),
            kind: kind.to_owned(),
            name: name.clone(),
        };
        let mut policy = Policy::default();
        for (ns, rules) in scopes {
            policy.roles.push(Role {
                metadata: meta(Some(ns)),
                rules: Some(compact(rules)),
            });
            policy.role_bindings.push(RoleBinding {
                metadata: meta(Some(ns)),
                role_ref: role_ref("Role"),
                subjects: Some(vec![subject.clone()]),
            });
        }
        if !cluster_rules.is_empty() {
            policy.cluster_role = Some(ClusterRole {
                metadata: meta(None),
                rules: Some(cluster_rules),
                ..Default::default()
            });
            policy.cluster_role_binding = Some(ClusterRoleBinding {
                metadata: meta(None),
                role_ref: role_ref("ClusterRole"),
                subjects: Some(vec![subject]),
            });
        }
        policy.denied = self
            .denied
            .iter()
            .map(|r| can_i(r, &self.options.user))
            .collect();
        policy
    }
}

/// Verbs, names or resources, sorted and each once.
type Words<'a> = BTreeSet<&'a str>;
/// One scope's grants before they are made rules: (group, resource, name) → verbs.
type Grants<'a> = BTreeMap<(&'a str, &'a str, &'a str), Words<'a>>;

/// One scope's (group, resource, name) → verbs as few rules: the names of a resource
/// with the same verbs together, then the resources of a group with the same verbs and
/// names together; sorted by group, then resources.
fn compact(entries: Grants<'_>) -> Vec<PolicyRule> {
    // (group, resource, verbs) → names ("" alone: no name).
    let mut named: BTreeMap<(&str, &str, Words<'_>), Words<'_>> = BTreeMap::new();
    for ((g, r, n), verbs) in entries {
        named.entry((g, r, verbs)).or_default().insert(n);
    }
    // (group, verbs, names) → resources.
    let mut grouped: BTreeMap<(&str, Words<'_>, Words<'_>), Words<'_>> = BTreeMap::new();
    for ((g, r, verbs), names) in named {
        // A nameless atom is never beside a named one of the same verb (the nameless one
        // covers it), so "" only ever stands alone.
        let names = names.into_iter().filter(|n| !n.is_empty()).collect();
        grouped.entry((g, verbs, names)).or_default().insert(r);
    }
    let mut rules: Vec<PolicyRule> = grouped
        .into_iter()
        .map(|((g, verbs, names), resources)| PolicyRule {
            api_groups: Some(vec![g.to_owned()]),
            resources: Some(resources.into_iter().map(str::to_owned).collect()),
            resource_names: (!names.is_empty())
                .then(|| names.into_iter().map(str::to_owned).collect()),
            verbs: verbs.into_iter().map(str::to_owned).collect(),
            ..Default::default()
        })
        .collect();
    rules.sort_by(|a, b| {
        (&a.api_groups, &a.resources, &a.resource_names, &a.verbs).cmp(&(
            &b.api_groups,
            &b.resources,
            &b.resource_names,
            &b.verbs,
        ))
    });
    rules
}

/// Non-resource URLs as rules: the URLs with the same verbs together, after the resource
/// rules.
fn url_rules(atoms: &BTreeSet<(&str, &str)>) -> Vec<PolicyRule> {
    let mut verbs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (path, verb) in atoms {
        verbs.entry(path).or_default().insert(verb);
    }
    let mut urls: BTreeMap<BTreeSet<&str>, Vec<String>> = BTreeMap::new();
    for (path, verbs) in verbs {
        urls.entry(verbs).or_default().push(path.to_owned());
    }
    let mut rules: Vec<PolicyRule> = urls
        .into_iter()
        .map(|(verbs, urls)| PolicyRule {
            non_resource_urls: Some(urls),
            verbs: verbs.into_iter().map(str::to_owned).collect(),
            ..Default::default()
        })
        .collect();
    rules.sort_by(|a, b| a.non_resource_urls.cmp(&b.non_resource_urls));
    rules
}

/// The subject the bindings name: a service account's own kind for its user name (so
/// that the binding follows the account), else the user.
fn subject(user: &str) -> Subject {
    if let Some((namespace, name)) = service_account(user) {
        return Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            api_group: None,
        };
    }
    Subject {
        kind: "User".to_owned(),
        name: user.to_owned(),
        api_group: Some(RBAC_GROUP.to_owned()),
        namespace: None,
    }
}

/// `system:serviceaccount:NS:NAME` → (NS, NAME).
fn service_account(user: &str) -> Option<(&str, &str)> {
    let (ns, name) = user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// `audit2rbac:<user>`, as audit2rbac names its objects: lower case, every character
/// but letters, digits and ':' a '-'; at most 253 characters, an object name's limit.
fn object_name(user: &str) -> String {
    let name: String = std::iter::once("audit2rbac:".to_owned())
        .chain(user.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == ':' {
                c.to_ascii_lowercase().to_string()
            } else {
                "-".to_owned()
            }
        }))
        .collect();
    name.chars().take(253).collect()
}

/// The user as a label value: audit2rbac's (lower case, every character but letters and
/// digits a '-'), cut to what the API takes (63 characters, alphanumeric at both ends).
fn label_value(user: &str) -> String {
    let value: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    value.trim_matches('-').to_owned()
}

/// The kubectl line that checks a request once the policy is applied. Shell-quoted where
/// needed, and escaped: it is printed as a YAML comment, where a line break from a request
/// path would end the comment and put text of the requester's choosing into the policy.
fn can_i(request: &Request, user: &str) -> String {
    let mut words = vec!["kubectl auth can-i".to_owned()];
    match request {
        Request::Resource {
            namespace,
            group,
            resource,
            name,
            verb,
        } => {
            let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
            let mut what = resource.to_owned();
            if !group.is_empty() {
                what = format!("{what}.{group}");
            }
            if !name.is_empty() {
                what = format!("{what}/{name}");
            }
            words.push(shell_quote(verb));
            words.push(shell_quote(&what));
            if !sub.is_empty() {
                words.push(format!("--subresource={}", shell_quote(sub)));
            }
            if namespace.is_empty() {
                words.push("-A".to_owned());
            } else {
                words.push(format!("-n {}", shell_quote(namespace)));
            }
        }
        Request::NonResource { path, verb } => {
            words.push(shell_quote(verb));
            words.push(shell_quote(path));
        }
    }
    words.push(format!("--as {}", shell_quote(user)));
    escape_terminal(&words.join(" ")).into_owned()
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The objects of a policy, and the checks of its denied requests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Policy {
    pub roles: Vec<Role>,
    pub cluster_role: Option<ClusterRole>,
    pub role_bindings: Vec<RoleBinding>,
    pub cluster_role_binding: Option<ClusterRoleBinding>,
    /// A `kubectl auth can-i` line per denied request.
    pub denied: Vec<String>,
}

impl Policy {
    /// No object: nothing to grant.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.cluster_role.is_none()
    }

    /// YAML documents for `kubectl apply -f -`, in audit2rbac's order (Roles, the
    /// ClusterRole, RoleBindings, the ClusterRoleBinding), the denied requests first as
    /// comments.
    pub fn to_yaml(&self, user: &str) -> Result<String, serde_saphyr::SerializeError> {
        let mut out = String::new();
        if !self.denied.is_empty() {
            let n = self.denied.len();
            out.push_str(&format!(
                "# {n} denied {} of {} (HTTP 403, or an authorizer's \"forbid\"), which the policy below grants;\n# check each once it is applied:\n",
                if n == 1 { "request" } else { "requests" },
                escape_terminal(user),
            ));
            for line in &self.denied {
                out.push_str(&format!("#   {line}\n"));
            }
        }
        let mut docs = vec![];
        for role in &self.roles {
            docs.push(serde_saphyr::to_string(role)?);
        }
        if let Some(c) = &self.cluster_role {
            docs.push(serde_saphyr::to_string(c)?);
        }
        for binding in &self.role_bindings {
            docs.push(serde_saphyr::to_string(binding)?);
        }
        if let Some(c) = &self.cluster_role_binding {
            docs.push(serde_saphyr::to_string(c)?);
        }
        for doc in docs {
            out.push_str("---\n");
            out.push_str(&doc);
            if !doc.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
