//! The deployment kit end to end, without a cluster: `hack/gen-certs.sh`'s certificates
//! served by the built binary and accepted for ingest (pushed with curl, and with kubectl
//! through `deploy/audit-webhook-kubeconfig.yaml`, i.e. with client-go's TLS, as
//! kube-apiserver's webhook pushes); and the kube-apiserver side of `deploy/` checked for
//! what matters: the audit policy keeps the stream out of its own input, the flag list and
//! the kubeadm patch agree with each other, with kube-apiserver's flag names and with the
//! server's limits, and the image recipe builds what the Deployment runs.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use kube_audit_stream::config::{Cli, Command as CliCommand};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kube-audit-stream");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Only there to fail a test that hangs.
const DEADLINE: Duration = Duration::from_secs(20);
/// The name the aggregator and the webhook kubeconfig (tls-server-name) check.
const SERVICE_DNS_NAME: &str = "kube-audit-stream.kube-audit-stream.svc";
const ADMIN_TOKEN: &str = "admin-token";

// ---------------------------------------------------------------------------------------
// Helpers

/// The documents of a YAML file of the repository.
fn yaml_file(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{ROOT}/{rel}")).unwrap();
    support::yaml::docs(&text, rel)
}

fn yaml_object(rel: &str) -> Value {
    let mut docs = yaml_file(rel);
    assert_eq!(docs.len(), 1, "{rel}: one object");
    docs.pop().unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn gen_certs(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(format!("{ROOT}/hack/gen-certs.sh"))
        .args(args)
        .output()
        .expect("bash on PATH")
}

/// curl with a deadline; the answer's status code (0 if there was none) and body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl on PATH");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The built binary, killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    /// `serve` on a free loopback port with `args`; returns once /healthz answers. The port
    /// is found by binding port 0 and letting it go (only `--dev` prints its address), so
    /// another process may take it first: then the server fails to bind, and we retry.
    fn start(dir: &Path, ca: &Path, args: &[&str]) -> Server {
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = dir.join(format!("server-{attempt}.log"));
            let child = Command::new(BIN)
                .args(["serve", "--bind-address", "127.0.0.1"])
                .args(["--secure-port", &port.to_string()])
                .args(args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut server = Server { child, port, log };
            let url = format!("https://localhost:{port}/healthz");
            let start = Instant::now();
            loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    let log = server.log_text();
                    assert!(
                        log.contains("binding"),
                        "the server exited ({status}): {log}"
                    );
                    break; // the port was taken: try another
                }
                if curl(&["--cacert", path_str(ca), &url]) == (200, "ok".to_owned()) {
                    return server;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "no /healthz within the deadline: {}",
                    server.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no free port after 3 attempts");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An audit.k8s.io/v1 EventList, as kube-apiserver's webhook sends it.
fn event_list(items: Vec<Value>) -> Value {
    json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items})
}

fn sample_events() -> Vec<Value> {
    std::fs::read_to_string(format!("{ROOT}/deploy/dev/sample-events.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The certificates, served and used for ingest

#[test]
fn generated_certificates_serve_and_authenticate_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let certs = dir.join("certs");
    let out = gen_certs(&[
        "--localhost",
        path_str(&certs),
        "apiserver-1",
        "apiserver-2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gen-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "serving-ca.crt",
        "serving-ca.key",
        "serving.crt",
        "serving.key",
        "ingest-ca.crt",
        "ingest-ca.key",
        "apiserver-1.crt",
        "apiserver-1.key",
        "apiserver-2.crt",
        "apiserver-2.key",
    ] {
        assert!(certs.join(file).is_file(), "gen-certs.sh wrote no {file}");
        assert!(
            stdout.contains(file),
            "gen-certs.sh does not say it wrote {file}"
        );
    }
    // It prints the commands that make the Secrets the Deployment mounts.
    for line in [
        "create secret tls kube-audit-stream-serving-cert",
        "create secret generic kube-audit-stream-ingest-ca",
        "kubectl patch apiservice v1alpha1.audit.k8s.io",
        "--ingest-allowed-names=apiserver-1,apiserver-2",
    ] {
        assert!(
            stdout.contains(line),
            "gen-certs.sh does not print {line:?}"
        );
    }
    // A second run keeps the CAs (and adds nothing it was not asked for).
    let before = std::fs::read(certs.join("ingest-ca.crt")).unwrap();
    assert!(
        gen_certs(&[path_str(&certs), "apiserver-1"])
            .status
            .success()
    );
    assert_eq!(std::fs::read(certs.join("ingest-ca.crt")).unwrap(), before);

    // Another set, with CAs of its own: its apiserver-1 must not be able to push.
    let other = dir.join("other");
    assert!(
        gen_certs(&[path_str(&other), "apiserver-1"])
            .status
            .success()
    );

    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{ADMIN_TOKEN},admin,uid-admin,\"system:masters\"\n"),
    )
    .unwrap();
    let ca = certs.join("serving-ca.crt");
    let server = Server::start(
        dir,
        &ca,
        &[
            "--tls-cert-file",
            path_str(&certs.join("serving.crt")),
            "--tls-private-key-file",
            path_str(&certs.join("serving.key")),
            "--ingest-client-ca-file",
            path_str(&certs.join("ingest-ca.crt")),
            "--ingest-allowed-names",
            "apiserver-1",
            "--token-auth-file",
            path_str(&tokens),
            "--authorization-mode",
            "AlwaysAllow",
        ],
    );
    let port = server.port.to_string();

    // The certificate is valid for the name the aggregator dials.
    let resolve = format!("{SERVICE_DNS_NAME}:{port}:127.0.0.1");
    let svc_url = |path: &str| format!("https://{SERVICE_DNS_NAME}:{port}{path}");
    assert_eq!(
        curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            path_str(&ca),
            &svc_url("/readyz")
        ]),
        (200, "ok".to_owned())
    );

    let body_file = dir.join("eventlist.json");
    std::fs::write(&body_file, event_list(sample_events()).to_string()).unwrap();
    // kubectl pushes other events than curl: the same body from the same pusher again
    // would be a webhook retry, published once.
    let kubectl_body_file = dir.join("eventlist-kubectl.json");
    let renamed = sample_events()
        .into_iter()
        .map(|mut e| {
            e["auditID"] = json!(format!("{}-kubectl", e["auditID"].as_str().unwrap()));
            e
        })
        .collect();
    std::fs::write(&kubectl_body_file, event_list(renamed).to_string()).unwrap();
    // One-event bodies: for the refused pushes, and a marker pushed last.
    let one_event = |name: &str, audit_id: &str| {
        let mut event = sample_events().swap_remove(0);
        event["auditID"] = json!(audit_id);
        let file = dir.join(name);
        std::fs::write(&file, event_list(vec![event]).to_string()).unwrap();
        file
    };
    let refused_file = one_event("refused.json", "00000000-0000-0000-0000-000000000401");
    let marker_file = one_event("marker.json", "11111111-2222-3333-4444-555555555555");
    let push = |cert: Option<(&Path, &str)>, body: &Path| {
        let (crt, key) = cert
            .map(|(d, name)| (d.join(format!("{name}.crt")), d.join(format!("{name}.key"))))
            .unzip();
        let mut args = vec!["--resolve", &resolve, "--cacert", path_str(&ca)];
        if body == refused_file {
            // The server refuses before reading the body. Over HTTP/2 it may then reset the
            // stream (CANCEL) before the answer is out, which curl reports as a framing
            // error instead of the 401/403; HTTP/1.1 gets the answer every time.
            args.push("--http1.1");
        }
        if let (Some(crt), Some(key)) = (&crt, &key) {
            args.extend(["--cert", path_str(crt), "--key", path_str(key)]);
        }
        let url = svc_url("/ingest");
        let data = format!("@{}", path_str(body));
        args.extend([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &url,
        ]);
        curl(&args)
    };

    // 1. curl with apiserver-1's certificate.
    let (code, body) = push(Some((&certs, "apiserver-1")), &body_file);
    assert_eq!(code, 200, "push as apiserver-1: {body}");

    // 2. kubectl, with the webhook kubeconfig as an operator installs it: client-go's TLS,
    //    as kube-apiserver's webhook, verifying the serving certificate against
    //    tls-server-name while dialling an IP address.
    let template =
        std::fs::read_to_string(format!("{ROOT}/deploy/audit-webhook-kubeconfig.yaml")).unwrap();
    let render = |server_name: &str| {
        template
            .replace("CLUSTER_IP:443", &format!("127.0.0.1:{port}"))
            .replace(
                "/etc/kubernetes/audit/kube-audit-stream-ca.crt",
                path_str(&ca),
            )
            .replace(
                "/etc/kubernetes/audit/ingest-client.crt",
                path_str(&certs.join("apiserver-1.crt")),
            )
            .replace(
                "/etc/kubernetes/audit/ingest-client.key",
                path_str(&certs.join("apiserver-1.key")),
            )
            .replace(
                &format!("tls-server-name: {SERVICE_DNS_NAME}"),
                &format!("tls-server-name: {server_name}"),
            )
    };
    let kubectl_push = |server_name: &str| {
        let kubeconfig = dir.join(format!("webhook-{server_name}.yaml"));
        std::fs::write(&kubeconfig, render(server_name)).unwrap();
        Command::new("kubectl")
            .args([
                "--kubeconfig",
                path_str(&kubeconfig),
                "--request-timeout=20s",
            ])
            // kubectl's --raw path replaces the server URL's path; kube-apiserver's webhook
            // client posts to the server URL itself, /ingest.
            .args([
                "create",
                "--raw",
                "/ingest",
                "-f",
                path_str(&kubectl_body_file),
            ])
            .env("HOME", dir)
            .output()
            .expect("kubectl on PATH")
    };
    let out = kubectl_push(SERVICE_DNS_NAME);
    assert!(
        out.status.success(),
        "kubectl push through the webhook kubeconfig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl_push("wrong.example");
    assert!(!out.status.success(), "tls-server-name is what is verified");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("x509"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. Refused pushers publish nothing.
    let (code, body) = push(Some((&other, "apiserver-1")), &refused_file);
    assert_eq!(code, 401, "a certificate from another CA: {body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["reason"],
        "Unauthorized"
    );
    let (code, body) = push(Some((&certs, "apiserver-2")), &refused_file);
    assert_eq!(code, 403, "a name not in --ingest-allowed-names: {body}");
    let (code, _) = push(None, &refused_file);
    assert_eq!(code, 401, "no certificate");

    // 4. The bus holds the two accepted pushes, each event named after the certificate's CN;
    //    the next event after them is a marker pushed now, so nothing refused got in.
    let pushed = sample_events().len() * 2;
    let mut watch = Command::new("curl")
        .args(["-sSN", "--max-time", "20", "--resolve", &resolve])
        .args(["--cacert", path_str(&ca)])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .arg(svc_url(
            "/apis/audit.k8s.io/v1alpha1/events?watch=1&resourceVersion=0",
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        let line = lines
            .next()
            .expect("the watch ended early")
            .expect("reading the watch");
        serde_json::from_str(&line).unwrap()
    };
    for n in 0..pushed {
        let ev = next();
        assert_eq!(ev["type"], "ADDED", "{ev}");
        assert_eq!(
            ev["object"]["annotations"]["audit.k8s.io/source"], "apiserver-1",
            "event {n}: the source is the client certificate's CN"
        );
    }
    let (code, body) = push(Some((&certs, "apiserver-1")), &marker_file);
    assert_eq!(code, 200, "{body}");
    let ev = next();
    assert_eq!(
        ev["object"]["auditID"], "11111111-2222-3333-4444-555555555555",
        "only the accepted pushes are on the bus"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn gen_certs_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("certs");
    for (args, expect) in [
        (vec![], "usage:"),
        (vec![path_str(&out_dir), "bad/name"], "a node name"),
        (vec![path_str(&out_dir), "serving"], "reserved"),
        (
            vec!["--namespace", "Not_DNS", path_str(&out_dir)],
            "DNS label",
        ),
        (vec!["--nope", path_str(&out_dir)], "unknown option"),
    ] {
        let out = gen_certs(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
    assert!(!out_dir.join("serving.key").exists(), "nothing written");
}

// ---------------------------------------------------------------------------------------
// The audit policy

/// One request as kube-apiserver's audit policy checker sees it.
struct Req<'a> {
    user: &'a str,
    groups: &'a [&'a str],
    verb: &'a str,
    /// (group, resource, subresource, namespace, name), or a non-resource path.
    target: Target<'a>,
}

enum Target<'a> {
    Resource(&'a str, &'a str, &'a str, &'a str, &'a str),
    Path(&'a str),
}

fn has(list: &Value, s: &str) -> bool {
    strings(list).iter().any(|x| x == s)
}

fn nonempty(v: &Value) -> bool {
    v.as_array().is_some_and(|a| !a.is_empty())
}

/// The level the policy gives `req`: the first rule that matches decides, as
/// k8s.io/apiserver/pkg/audit/policy/checker.go's ruleMatches does; no match is None.
fn level(policy: &Value, req: &Req) -> String {
    for rule in policy["rules"].as_array().unwrap() {
        if rule_matches(rule, req) {
            return rule["level"].as_str().unwrap().to_owned();
        }
    }
    "None".to_owned()
}

fn rule_matches(rule: &Value, req: &Req) -> bool {
    if nonempty(&rule["users"]) && !has(&rule["users"], req.user) {
        return false;
    }
    if nonempty(&rule["userGroups"]) && !req.groups.iter().any(|g| has(&rule["userGroups"], g)) {
        return false;
    }
    if nonempty(&rule["verbs"]) && !has(&rule["verbs"], req.verb) {
        return false;
    }
    if nonempty(&rule["namespaces"]) || nonempty(&rule["resources"]) {
        let Target::Resource(group, resource, subresource, namespace, name) = req.target else {
            return false;
        };
        if nonempty(&rule["namespaces"]) && !has(&rule["namespaces"], namespace) {
            return false;
        }
        if !nonempty(&rule["resources"]) {
            return true;
        }
        let combined = if subresource.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}/{subresource}")
        };
        return rule["resources"].as_array().unwrap().iter().any(|gr| {
            if gr["group"].as_str().unwrap_or("") != group {
                return false;
            }
            if !nonempty(&gr["resources"]) {
                return true;
            }
            if nonempty(&gr["resourceNames"]) && !has(&gr["resourceNames"], name) {
                return false;
            }
            strings(&gr["resources"]).iter().any(|r| {
                r == &combined
                    || r == "*"
                    || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
                    || r.strip_suffix("/*") == Some(resource)
            })
        });
    }
    if nonempty(&rule["nonResourceURLs"]) {
        let Target::Path(path) = req.target else {
            return false;
        };
        return strings(&rule["nonResourceURLs"]).iter().any(|spec| {
            spec == "*"
                || spec == path
                || spec
                    .strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        });
    }
    true
}

#[test]
fn the_audit_policy_keeps_the_stream_out_of_itself() {
    let policy = yaml_object("deploy/audit-policy.yaml");
    assert_eq!(policy["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(policy["kind"], "Policy");
    assert!(has(&policy["omitStages"], "RequestReceived"));

    // The server's identity, from the manifests.
    let sa = yaml_object("manifests/base/serviceaccount.yaml");
    let server_user = format!(
        "system:serviceaccount:{}:{}",
        sa["metadata"]["namespace"].as_str().unwrap(),
        sa["metadata"]["name"].as_str().unwrap()
    );
    let server_groups = ["system:serviceaccounts", "system:authenticated"];
    let alice = ["system:authenticated"];
    let node = ["system:nodes", "system:authenticated"];
    use Target::{Path as P, Resource as R};
    let cases = [
        // The stream's own traffic: watches, discovery, and the server's reviews.
        (
            "alice watches her namespace's audit events",
            Req {
                user: "alice",
                groups: &alice,
                verb: "watch",
                target: R("audit.k8s.io", "namespacedevents", "", "team-a", ""),
            },
            "None",
        ),
        (
            "an admin watches every audit event",
            Req {
                user: "admin",
                groups: &["system:masters"],
                verb: "watch",
                target: R("audit.k8s.io", "events", "", "", ""),
            },
            "None",
        ),
        (
            "kubectl discovers the group",
            Req {
                user: "alice",
                groups: &alice,
                verb: "get",
                target: P("/apis/audit.k8s.io/v1alpha1"),
            },
            "None",
        ),
        (
            "the server reviews a watcher's token",
            Req {
                user: &server_user,
                groups: &server_groups,
                verb: "create",
                target: R("authentication.k8s.io", "tokenreviews", "", "", ""),
            },
            "None",
        ),
        (
            "the server authorizes (again) a watch",
            Req {
                user: &server_user,
                groups: &server_groups,
                verb: "create",
                target: R("authorization.k8s.io", "subjectaccessreviews", "", "", ""),
            },
            "None",
        ),
        (
            "the server watches the authentication ConfigMap",
            Req {
                user: &server_user,
                groups: &server_groups,
                verb: "watch",
                target: R(
                    "",
                    "configmaps",
                    "",
                    "kube-system",
                    "extension-apiserver-authentication",
                ),
            },
            "None",
        ),
        // ...but only the server's: the same reviews by someone else are recorded.
        (
            "someone else creates a SubjectAccessReview",
            Req {
                user: "alice",
                groups: &alice,
                verb: "create",
                target: R("authorization.k8s.io", "subjectaccessreviews", "", "", ""),
            },
            "RequestResponse",
        ),
        (
            "the server's identity reads a Secret",
            Req {
                user: &server_user,
                groups: &server_groups,
                verb: "get",
                target: R("", "secrets", "", "kube-system", "x"),
            },
            "Metadata",
        ),
        // Noise.
        (
            "a kubelet renews its lease",
            Req {
                user: "system:node:n1",
                groups: &node,
                verb: "update",
                target: R("coordination.k8s.io", "leases", "", "kube-node-lease", "n1"),
            },
            "None",
        ),
        (
            "the scheduler lists pods",
            Req {
                user: "system:kube-scheduler",
                groups: &["system:authenticated"],
                verb: "list",
                target: R("", "pods", "", "", ""),
            },
            "None",
        ),
        (
            "a health check",
            Req {
                user: "system:anonymous",
                groups: &["system:unauthenticated"],
                verb: "get",
                target: P("/readyz"),
            },
            "None",
        ),
        (
            "a controller records an Event",
            Req {
                user: "system:kube-controller-manager",
                groups: &["system:authenticated"],
                verb: "create",
                target: R("", "events", "", "team-a", "x"),
            },
            "None",
        ),
        // What a namespace owner asks about.
        (
            "alice deletes a ConfigMap",
            Req {
                user: "alice",
                groups: &alice,
                verb: "delete",
                target: R("", "configmaps", "", "team-a", "settings"),
            },
            "Metadata",
        ),
        (
            "alice reads a Secret",
            Req {
                user: "alice",
                groups: &alice,
                verb: "get",
                target: R("", "secrets", "", "team-a", "db"),
            },
            "Metadata",
        ),
        (
            "alice asks for a ServiceAccount token",
            Req {
                user: "alice",
                groups: &alice,
                verb: "create",
                target: R("", "serviceaccounts", "token", "team-a", "ci"),
            },
            "Metadata",
        ),
        (
            "alice lists pods",
            Req {
                user: "alice",
                groups: &alice,
                verb: "list",
                target: R("", "pods", "", "team-a", ""),
            },
            "Metadata",
        ),
        (
            "alice scales a Deployment",
            Req {
                user: "alice",
                groups: &alice,
                verb: "patch",
                target: R("apps", "deployments", "scale", "team-a", "web"),
            },
            "RequestResponse",
        ),
        (
            "a controller deletes a pod",
            Req {
                user: "system:serviceaccount:kube-system:replicaset-controller",
                groups: &["system:serviceaccounts", "system:authenticated"],
                verb: "delete",
                target: R("", "pods", "", "team-a", "web-1"),
            },
            "RequestResponse",
        ),
    ];
    for (what, req, want) in cases {
        assert_eq!(level(&policy, &req), want, "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// The kube-apiserver side

/// Every kube-apiserver flag of the audit policy and webhook backend.
const KUBE_APISERVER_AUDIT_FLAGS: &[&str] = &[
    "audit-policy-file",
    "audit-webhook-config-file",
    "audit-webhook-version",
    "audit-webhook-mode",
    "audit-webhook-initial-backoff",
    "audit-webhook-batch-buffer-size",
    "audit-webhook-batch-max-size",
    "audit-webhook-batch-max-wait",
    "audit-webhook-batch-throttle-enable",
    "audit-webhook-batch-throttle-qps",
    "audit-webhook-batch-throttle-burst",
    "audit-webhook-truncate-enabled",
    "audit-webhook-truncate-max-event-size",
    "audit-webhook-truncate-max-batch-size",
];

/// deploy/kube-apiserver-flags.txt as name -> value.
fn flags_file() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/kube-apiserver-flags.txt")).unwrap();
    let mut flags = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .strip_prefix("--")
            .and_then(|l| l.split_once('='))
            .unwrap_or_else(|| panic!("not --flag=value: {line}"));
        assert!(
            flags.insert(name.to_owned(), value.to_owned()).is_none(),
            "--{name} twice"
        );
    }
    flags
}

#[test]
fn the_flags_and_the_kubeadm_patch_agree_with_kube_apiserver_and_the_server() {
    let flags = flags_file();
    for name in flags.keys() {
        assert!(
            KUBE_APISERVER_AUDIT_FLAGS.contains(&name.as_str()),
            "--{name} is not a kube-apiserver audit flag"
        );
    }
    assert_eq!(flags["audit-webhook-mode"], "batch");
    assert_eq!(flags["audit-webhook-version"], "audit.k8s.io/v1");
    assert_eq!(flags["audit-webhook-truncate-enabled"], "true");

    let kubeadm = yaml_object("deploy/kubeadm-clusterconfiguration.yaml");
    let api_server = &kubeadm["apiServer"];
    let extra_args: BTreeMap<String, String> = api_server["extraArgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["value"]
                    .as_str()
                    .expect("extraArgs values are strings")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        extra_args, flags,
        "kubeadm's extraArgs are kube-apiserver-flags.txt"
    );

    // The files the flags name are in the directory kubeadm mounts, read-only.
    let volumes = api_server["extraVolumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1);
    let mount = volumes[0]["mountPath"].as_str().unwrap();
    assert_eq!(volumes[0]["hostPath"], mount, "same path on the host");
    assert_eq!(volumes[0]["readOnly"], true);
    for flag in ["audit-policy-file", "audit-webhook-config-file"] {
        assert!(
            flags[flag].starts_with(&format!("{mount}/")),
            "--{flag} is not under {mount}"
        );
    }
    let kubeconfig = yaml_object("deploy/audit-webhook-kubeconfig.yaml");
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let user = &kubeconfig["users"][0]["user"];
    for file in [
        &cluster["certificate-authority"],
        &user["client-certificate"],
        &user["client-key"],
    ] {
        assert!(
            file.as_str().unwrap().starts_with(&format!("{mount}/")),
            "{file} is not under {mount}"
        );
    }

    // kube-apiserver's batches and events fit what the server accepts.
    let cli = Cli::try_parse_from(["kube-audit-stream", "serve", "--dev"]).unwrap();
    let CliCommand::Serve(serve) = cli.command;
    let batch: u64 = flags["audit-webhook-truncate-max-batch-size"]
        .parse()
        .unwrap();
    assert!(
        batch <= serve.ingest.max_request_bytes,
        "a batch above --max-request-bytes would get a 413"
    );
    let event: usize = flags["audit-webhook-truncate-max-event-size"]
        .parse()
        .unwrap();
    assert!(event <= serve.stream.max_event_bytes);
}

#[test]
fn the_webhook_kubeconfig_points_at_the_service() {
    let kubeconfig = yaml_object("deploy/audit-webhook-kubeconfig.yaml");
    let service = yaml_object("manifests/base/service.yaml");
    let clusters = kubeconfig["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1);
    let cluster = &clusters[0]["cluster"];
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        cluster["server"],
        format!("https://CLUSTER_IP:{port}/ingest"),
        "the Service's port and the ingest path; no query (the webhook client drops it)"
    );
    assert_eq!(
        cluster["tls-server-name"],
        format!(
            "{}.{}.svc",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap()
        ),
        "the name in the serving certificate"
    );
    assert_eq!(cluster["tls-server-name"], SERVICE_DNS_NAME);
    let current = kubeconfig["current-context"].as_str().unwrap();
    let context = kubeconfig["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == current)
        .expect("current-context names a context");
    assert_eq!(context["context"]["cluster"], clusters[0]["name"]);
    assert_eq!(context["context"]["user"], kubeconfig["users"][0]["name"]);
}

// ---------------------------------------------------------------------------------------
// The image

#[test]
fn the_image_recipe_matches_the_crate_and_the_deployment() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let cargo_toml = std::fs::read_to_string(format!("{ROOT}/Cargo.toml")).unwrap();
    let version = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    let rust_version = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml has a rust-version")
        .trim_matches('"');
    let image_rust = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("the Dockerfile has ARG RUST_VERSION=");
    assert!(
        version(image_rust) >= version(rust_version),
        "the build image's Rust {image_rust} is older than the crate's rust-version {rust_version}"
    );
    // The build stage runs the static build CI runs (hack/build-static.sh), and the image
    // is that one binary on scratch.
    let build_script = std::fs::read_to_string(format!("{ROOT}/hack/build-static.sh")).unwrap();
    assert!(build_script.contains("cargo build --release --locked --bin kube-audit-stream"));
    assert!(build_script.contains("target-feature=+crt-static"));
    assert!(dockerfile.contains("hack/build-static.sh /out"));
    let stages: Vec<&str> = dockerfile.split("\nFROM ").skip(1).collect();
    let stage = |from: &str| {
        stages
            .iter()
            .find(|s| s.starts_with(from))
            .unwrap_or_else(|| panic!("the Dockerfile has a stage FROM {from}"))
    };
    let runtime = stage("scratch AS runtime\n");
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/kube-audit-stream\"]"));
    // Both targets put the binary where the entrypoint runs it, and nothing else.
    let from_source = stages.last().unwrap();
    assert!(
        from_source.starts_with("runtime\n"),
        "the default target runs on scratch"
    );
    let prebuilt = stage("runtime AS prebuilt\n");
    for (target, copy) in [
        (from_source, "COPY --from=build /out/kube-audit-stream"),
        (prebuilt, "COPY kube-audit-stream"),
    ] {
        let copies: Vec<&str> = target.lines().filter(|l| l.starts_with("COPY")).collect();
        assert_eq!(copies, [format!("{copy} /usr/local/bin/kube-audit-stream")]);
    }

    // The image's user is the Deployment's, and not root.
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    let deployment = yaml_object("manifests/base/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        user,
        format!("{}:{}", pod["runAsUser"], pod["runAsGroup"]),
        "USER is the Deployment's runAsUser:runAsGroup"
    );
    assert_ne!(pod["runAsUser"], 0);

    // .dockerignore lets through what the build reads: the manifest's targets and the
    // files the binary embeds.
    let ignore = std::fs::read_to_string(format!("{ROOT}/.dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let excluded = |path: &str| {
        let mut out = false;
        for p in &patterns {
            let (negated, p) = match p.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, *p),
            };
            let p = p.trim_end_matches('/');
            let hit = path == p
                || path.starts_with(&format!("{p}/"))
                || p.strip_suffix("/*")
                    .is_some_and(|dir| path.starts_with(&format!("{dir}/")));
            if hit {
                out = !negated;
            }
        }
        out
    };
    for path in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "src/lib.rs",
        "benches/ingest.rs",
        "hack/loadgen/main.rs",
        "hack/build-static.sh",
        "deploy/dev/tokens.csv",
        "deploy/dev/abac-policy.jsonl",
    ] {
        assert!(
            Path::new(ROOT).join(path).exists(),
            "{path} is gone: update this test"
        );
        assert!(!excluded(path), ".dockerignore excludes {path}");
    }
    assert!(excluded("target/debug/kube-audit-stream"));
}
