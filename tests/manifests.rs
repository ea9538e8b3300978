//! `manifests/` against the server: the APIService names the group and version the server
//! serves, the ClusterRoles grant exactly the served resources with exactly the served
//! verbs (`get`, `list`, `watch`: a missing one locks users out, an extra one would be
//! a grant nobody reviewed), the
//! Deployment's flags are ones the binary accepts in cluster mode, its probes answer
//! without credentials, and the objects point at each other by the right names, in both
//! variants (`manifests/`, `manifests/cert-manager/` and `manifests/nats/`, built with kubectl's kustomize).
//!
//! The YAML is read with PyYAML through `python3` (the crate has no YAML parser);
//! `hack/validate-manifests.sh` checks the same files against the Kubernetes schemas.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use clap::Parser;
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, APIResourceList};
use kube_audit_stream::config::{Cli, Command as CliCommand};
use serde_json::Value;
use support::cluster::Cluster;
use support::server::{ADMIN_TOKEN, TestServer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The one object in `manifests/base/<name>`.
fn base(name: &str) -> Value {
    let path = format!("{ROOT}/manifests/base/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut docs = support::yaml::docs(&text, &path);
    assert_eq!(docs.len(), 1, "{path}: one object per file");
    docs.pop().unwrap()
}

/// What `kubectl apply -k <dir>` would send, built by kubectl's kustomize.
fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()
        .expect("kubectl on PATH");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    support::yaml::docs(&String::from_utf8(out.stdout).unwrap(), dir)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The value of `--flag=value` in the container's args.
fn arg(deployment: &Value, flag: &str) -> String {
    let prefix = format!("{flag}=");
    strings(&container(deployment)["args"])
        .into_iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| panic!("the Deployment does not pass {flag}=..."))
}

/// The Secret mounted at the directory holding `file`, and the key projected as `file`.
fn secret_behind(deployment: &Value, file: &str) -> (String, String) {
    let (dir, base_name) = file.rsplit_once('/').unwrap();
    let mount = container(deployment)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir} for {file}"));
    assert_eq!(mount["readOnly"], true, "{dir} is mounted read-only");
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret = &volume["secret"];
    let key = secret["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == base_name)
        .unwrap_or_else(|| panic!("{file} is not projected from the Secret"))["key"]
        .as_str()
        .unwrap()
        .to_owned();
    (secret["secretName"].as_str().unwrap().to_owned(), key)
}

#[tokio::test]
async fn apiservice_and_roles_match_what_the_server_serves() {
    let server = TestServer::start(&[]).await;
    let admin = server.client(Some(ADMIN_TOKEN));

    let (code, body) = admin.get("/apis/audit.k8s.io/v1alpha1").await;
    assert_eq!(code, StatusCode::OK);
    let list: APIResourceList = serde_json::from_slice(&body).unwrap();
    let (group, version) = list.group_version.split_once('/').unwrap();
    // resource -> (namespaced, verbs)
    let served: BTreeMap<String, (bool, BTreeSet<String>)> = list
        .resources
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                (r.namespaced, r.verbs.iter().cloned().collect()),
            )
        })
        .collect();

    let apiservice = base("apiservice.yaml");
    assert_eq!(apiservice["kind"], "APIService");
    assert_eq!(apiservice["spec"]["group"], group);
    assert_eq!(apiservice["spec"]["version"], version);
    assert_eq!(apiservice["metadata"]["name"], format!("{version}.{group}"));
    assert_eq!(apiservice["spec"]["groupPriorityMinimum"], 1000);
    assert_eq!(apiservice["spec"]["versionPriority"], 15);

    let (code, body) = admin.get(&format!("/apis/{group}")).await;
    assert_eq!(code, StatusCode::OK);
    let api_group: APIGroup = serde_json::from_slice(&body).unwrap();
    assert_eq!(api_group.preferred_version.unwrap().version, version);

    let mut granted = BTreeSet::new();
    for (file, name, namespaced) in [
        (
            "clusterrole-namespace-viewer.yaml",
            "audit-stream-namespace-viewer",
            true,
        ),
        (
            "clusterrole-cluster-viewer.yaml",
            "audit-stream-cluster-viewer",
            false,
        ),
        (
            "clusterrole-sources-viewer.yaml",
            "audit-stream-sources-viewer",
            false,
        ),
    ] {
        let role = base(file);
        assert_eq!(role["kind"], "ClusterRole", "{file}");
        assert_eq!(role["metadata"]["name"], name, "{file}");
        for rule in role["rules"].as_array().unwrap() {
            assert_eq!(strings(&rule["apiGroups"]), [group], "{file}");
            let verbs: BTreeSet<String> = strings(&rule["verbs"]).into_iter().collect();
            for resource in strings(&rule["resources"]) {
                let (is_namespaced, served_verbs) = served
                    .get(&resource)
                    .unwrap_or_else(|| panic!("{file} grants {resource}, which is not served"));
                assert_eq!(*is_namespaced, namespaced, "{file}: {resource} namespaced?");
                // Read-only, and all of it: exactly what is served.
                assert_eq!(
                    &verbs, served_verbs,
                    "{file}: the verbs on {resource} must be those the server serves"
                );
                let read_only: BTreeSet<String> = ["get", "list", "watch"].map(String::from).into();
                assert_eq!(verbs, read_only, "{file}: exactly get, list and watch");
                granted.insert(resource);
            }
        }
    }
    assert_eq!(
        granted,
        served.keys().cloned().collect(),
        "every served resource has a viewer role"
    );
}

/// The Deployment's args, adapted only where a test cannot run them as they are:
/// `--secure-port=0` and `--bind-address=127.0.0.1` (an ephemeral loopback port, not
/// 0.0.0.0:8443); where an arg names a file in a mounted Secret, a file of this test's
/// (`secret_file` says what each Secret key holds); and `--kubeconfig` for the fake
/// kube-apiserver, where the pod would use its in-cluster ServiceAccount. Every other arg
/// is passed as the Deployment has it.
fn deployment_args_for_a_test(
    deployment: &Value,
    dir: &std::path::Path,
    secret_file: impl Fn(&str, &str) -> String,
    kubeconfig: &std::path::Path,
) -> Vec<String> {
    let mut args = vec![];
    for a in strings(&container(deployment)["args"]) {
        let Some((flag, value)) = a.split_once('=') else {
            args.push(a);
            continue;
        };
        assert!(
            !matches!(flag, "--bind-address" | "--kubeconfig"),
            "the Deployment passes {flag}: adapt it here"
        );
        if flag == "--secure-port" {
            args.push("--secure-port=0".to_owned());
        } else if value.starts_with('/') {
            let (secret, key) = secret_behind(deployment, value);
            let path = dir.join(&secret).join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, secret_file(&secret, &key)).unwrap();
            args.push(format!("{flag}={}", path.display()));
        } else {
            args.push(a);
        }
    }
    args.push("--bind-address=127.0.0.1".to_owned());
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    args
}

/// The probes, against a server run with the Deployment's own args (in cluster mode,
/// against a fake kube-apiserver): the kubelet's requests, with no credentials, answered.
#[tokio::test]
async fn the_probe_paths_answer_without_credentials() {
    let deployment = base("deployment.yaml");
    let c = container(&deployment);
    let cluster = Cluster::new().await;
    let dir = tempfile::tempdir().unwrap();
    let serving_ca = support::pki::Ca::new("serving-ca");
    let serving = serving_ca.server();
    let ingest_ca = support::pki::Ca::new("ingest-ca");
    let args = deployment_args_for_a_test(
        &deployment,
        dir.path(),
        |secret, key| match (secret, key) {
            ("kube-audit-stream-serving-cert", "tls.crt") => serving.cert.clone(),
            ("kube-audit-stream-serving-cert", "tls.key") => serving.key.clone(),
            ("kube-audit-stream-ingest-ca", "ca.crt") => ingest_ca.pem(),
            _ => panic!("the Deployment mounts {secret}/{key}: say here what it holds"),
        },
        &cluster.fake.kubeconfig(dir.path()),
    );
    let server = TestServer::start_args(dir, serving_ca, &args).await;
    let https_port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "https")
        .expect("a port named https")["containerPort"]
        .as_u64()
        .unwrap();
    assert_eq!(arg(&deployment, "--secure-port"), https_port.to_string());
    let anonymous = server.client(None);
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
        assert_eq!(
            get["port"], "https",
            "{probe} uses the named port, the server's --secure-port"
        );
        let (code, body) = anonymous.get(path).await;
        assert_eq!(code, StatusCode::OK, "{path} without credentials");
        assert_eq!(&body[..], b"ok");
    }
    // Only the probes: the API itself still wants credentials.
    let (code, _) = anonymous.get("/apis/audit.k8s.io/v1alpha1/events").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[test]
fn the_deployment_args_are_a_valid_cluster_mode_command_line() {
    let deployment = base("deployment.yaml");
    let args = strings(&container(&deployment)["args"]);
    assert_eq!(args[0], "serve");
    let cli = Cli::try_parse_from(std::iter::once("kube-audit-stream".to_owned()).chain(args))
        .unwrap_or_else(|e| panic!("the binary rejects the Deployment's args: {e}"));
    let CliCommand::Serve(serve) = cli.command;
    let settings = serve
        .validate()
        .unwrap_or_else(|e| panic!("the Deployment's args do not validate: {e}"));
    assert!(
        settings.cluster.is_some(),
        "cluster mode: in-cluster config, TokenReview and SubjectAccessReview"
    );
    assert!(!settings.dev);

    let port = container(&deployment)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "https")
        .expect("a port named https")["containerPort"]
        .as_u64()
        .unwrap();
    assert_eq!(u64::from(settings.listen.port()), port);

    // The certificate files come from the Secrets that hack/gen-certs.sh's commands and
    // the cert-manager variant create.
    for (flag, secret, key) in [
        (
            "--tls-cert-file",
            "kube-audit-stream-serving-cert",
            "tls.crt",
        ),
        (
            "--tls-private-key-file",
            "kube-audit-stream-serving-cert",
            "tls.key",
        ),
        (
            "--ingest-client-ca-file",
            "kube-audit-stream-ingest-ca",
            "ca.crt",
        ),
    ] {
        let file = arg(&deployment, flag);
        assert_eq!(
            secret_behind(&deployment, &file),
            (secret.to_owned(), key.to_owned()),
            "{flag}={file}"
        );
    }
    assert!(!arg(&deployment, "--ingest-allowed-names").is_empty());
}

#[test]
fn the_deployment_is_one_hardened_replica() {
    let deployment = base("deployment.yaml");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1, "the bus lives in one replica's memory");
    assert_eq!(
        spec["strategy"]["type"], "Recreate",
        "two pods would split the pushes"
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(&deployment);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource}"
            );
        }
    }
}

#[test]
fn the_objects_point_at_each_other() {
    let objects = kustomize("manifests");
    let namespace = find(&objects, "Namespace", "kube-audit-stream");
    let ns = namespace["metadata"]["name"].as_str().unwrap();
    let sa = find(&objects, "ServiceAccount", "kube-audit-stream");
    assert_eq!(sa["metadata"]["namespace"], ns);
    let deployment = find(&objects, "Deployment", "kube-audit-stream");
    assert_eq!(deployment["metadata"]["namespace"], ns);
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], sa["metadata"]["name"]);

    let service = find(&objects, "Service", "kube-audit-stream");
    assert_eq!(service["metadata"]["namespace"], ns);
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][k], v,
            "the Service selects the pod"
        );
        assert_eq!(&deployment["spec"]["selector"]["matchLabels"][k], v);
    }
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "one port: the aggregator and /ingest");
    assert_eq!(ports[0]["port"], 443);
    assert_eq!(ports[0]["targetPort"], "https");

    let apiservice = find(&objects, "APIService", "v1alpha1.audit.k8s.io");
    let svc_ref = &apiservice["spec"]["service"];
    assert_eq!(svc_ref["name"], service["metadata"]["name"]);
    assert_eq!(svc_ref["namespace"], ns);
    assert_eq!(svc_ref["port"], ports[0]["port"]);
    assert!(
        apiservice["spec"].get("caBundle").is_none(),
        "no caBundle in the manifests: re-applying them must not overwrite the one patched in"
    );
    assert_ne!(apiservice["spec"]["insecureSkipTLSVerify"], true);

    let delegator = find(
        &objects,
        "ClusterRoleBinding",
        "kube-audit-stream:system:auth-delegator",
    );
    assert_eq!(delegator["roleRef"]["name"], "system:auth-delegator");
    let reader = find(
        &objects,
        "RoleBinding",
        "kube-audit-stream:extension-apiserver-authentication-reader",
    );
    assert_eq!(reader["metadata"]["namespace"], "kube-system");
    assert_eq!(reader["roleRef"]["kind"], "Role");
    assert_eq!(
        reader["roleRef"]["name"],
        "extension-apiserver-authentication-reader"
    );
    for binding in [delegator, reader] {
        let subjects = binding["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["name"], sa["metadata"]["name"]);
        assert_eq!(subjects[0]["namespace"], ns);
    }
}

#[test]
fn the_viewer_roles_are_never_aggregated() {
    for dir in ["manifests", "manifests/cert-manager"] {
        let objects = kustomize(dir);
        let roles: Vec<_> = objects
            .iter()
            .filter(|o| o["kind"] == "ClusterRole")
            .collect();
        // The three viewer roles at least: a loop over nothing would pass whatever is rendered.
        let viewers = roles
            .iter()
            .filter(|r| {
                r["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("viewer"))
            })
            .count();
        assert!(
            viewers >= 3,
            "{dir}: viewer ClusterRoles rendered: {viewers}"
        );
        for role in roles {
            let name = &role["metadata"]["name"];
            assert!(
                role.get("aggregationRule").is_none(),
                "{dir}: {name} aggregates"
            );
            if let Some(labels) = role["metadata"]["labels"].as_object() {
                for label in labels.keys() {
                    assert!(
                        !label.starts_with("rbac.authorization.k8s.io/aggregate-to-"),
                        "{dir}: {name} is aggregated ({label}): audit events can carry secrets"
                    );
                }
            }
        }
    }
}

#[test]
fn the_cert_manager_variant_issues_what_the_deployment_mounts() {
    let objects = kustomize("manifests/cert-manager");
    let deployment = find(&objects, "Deployment", "kube-audit-stream");
    let service = find(&objects, "Service", "kube-audit-stream");
    let dns_name = format!(
        "{}.{}.svc",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );

    // The APIService's CA comes from the serving Certificate, whose Secret the server serves.
    let apiservice = find(&objects, "APIService", "v1alpha1.audit.k8s.io");
    let inject = apiservice["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .expect("the cert-manager.io/inject-ca-from annotation");
    let (ns, name) = inject.split_once('/').unwrap();
    let serving = find(&objects, "Certificate", name);
    assert_eq!(serving["metadata"]["namespace"], ns);
    let (serving_secret, _) = secret_behind(deployment, &arg(deployment, "--tls-cert-file"));
    assert_eq!(serving["spec"]["secretName"], serving_secret.as_str());
    let dns_names = strings(&serving["spec"]["dnsNames"]);
    assert!(dns_names.contains(&dns_name), "{dns_names:?}");
    assert!(dns_names.contains(&format!("{dns_name}.cluster.local")));
    assert!(strings(&serving["spec"]["usages"]).contains(&"server auth".to_owned()));

    // The ingest CA Secret is the one mounted as --ingest-client-ca-file, and every client
    // Certificate it issues is for a name the server lets push.
    let (ingest_secret, _) = secret_behind(deployment, &arg(deployment, "--ingest-client-ca-file"));
    let allowed: BTreeSet<String> = arg(deployment, "--ingest-allowed-names")
        .split(',')
        .map(str::to_owned)
        .collect();
    let ingest_ca = objects
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["spec"]["secretName"] == ingest_secret.as_str())
        .expect("a Certificate for the ingest CA Secret");
    assert_eq!(ingest_ca["spec"]["isCA"], true);
    let ingest_issuer = objects
        .iter()
        .find(|o| o["kind"] == "Issuer" && o["spec"]["ca"]["secretName"] == ingest_secret.as_str())
        .expect("an Issuer signing with the ingest CA");
    let mut clients = 0;
    for cert in objects.iter().filter(|o| o["kind"] == "Certificate") {
        let spec = &cert["spec"];
        // Every issuerRef names an Issuer of the build.
        find(
            &objects,
            "Issuer",
            spec["issuerRef"]["name"].as_str().unwrap(),
        );
        if spec["issuerRef"]["name"] == ingest_issuer["metadata"]["name"] {
            clients += 1;
            assert!(strings(&spec["usages"]).contains(&"client auth".to_owned()));
            let cn = spec["commonName"].as_str().unwrap();
            assert!(
                allowed.contains(cn),
                "{cn} is not in --ingest-allowed-names"
            );
        }
    }
    assert!(clients > 0, "an example apiserver client Certificate");
}

/// The scale-out variant: three replicas of the same server sharing one NATS stream, a
/// disruption budget and spread, and a NATS that the `--nats-url` reaches.
#[test]
fn the_nats_variant_is_three_replicas_on_one_stream() {
    let objects = kustomize("manifests/nats");
    let deployment = find(&objects, "Deployment", "kube-audit-stream");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let args = strings(&container(deployment)["args"]);
    let cli = Cli::try_parse_from(std::iter::once("kube-audit-stream".to_owned()).chain(args))
        .unwrap_or_else(|e| panic!("the binary rejects the variant's args: {e}"));
    let CliCommand::Serve(serve) = cli.command;
    let settings = serve
        .validate()
        .unwrap_or_else(|e| panic!("the variant's args do not validate: {e}"));
    let nats = settings.nats.expect("--bus=nats");
    // nats://SERVICE.NAMESPACE.svc:PORT names the NATS client Service and its port.
    let url = &nats.urls[0];
    let host_port = url.strip_prefix("nats://").unwrap();
    let (host, port) = host_port.split_once(':').unwrap();
    let (service, namespace) = host.strip_suffix(".svc").unwrap().split_once('.').unwrap();
    let svc = find(&objects, "Service", service);
    assert_eq!(svc["metadata"]["namespace"], namespace);
    let ports = svc["spec"]["ports"].as_array().unwrap();
    let port: u64 = port.parse().unwrap();
    assert!(ports.iter().any(|p| p["port"] == port), "{url}");
    let nats_set = find(&objects, "StatefulSet", "nats");
    assert_eq!(nats_set["spec"]["replicas"], 3);
    assert_eq!(
        svc["spec"]["selector"], nats_set["spec"]["template"]["metadata"]["labels"],
        "the client Service selects the NATS pods"
    );

    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pdb = find(&objects, "PodDisruptionBudget", "kube-audit-stream");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *pod_labels);
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    let anti = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(anti["labelSelector"]["matchLabels"], *pod_labels);
    // The base stays one replica without NATS.
    let base = find(&kustomize("manifests"), "Deployment", "kube-audit-stream").clone();
    assert_eq!(base["spec"]["replicas"], 1);
    assert!(
        !strings(&container(&base)["args"])
            .iter()
            .any(|a| a.starts_with("--bus"))
    );
}
