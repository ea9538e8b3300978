#!/usr/bin/env bash
# Validates every YAML file in manifests/ and deploy/, as CI does:
#
#  - Kubernetes objects against the Kubernetes OpenAPI schemas, strictly (an unknown or
#    misspelt field is an error), with kubernetes-validate (PyPI; it bundles the schemas,
#    so no network is needed), for the Kubernetes version the project builds against
#    (k8s-openapi's v1_33) and the newest one kubernetes-validate knows;
#  - every kustomization (manifests/, manifests/cert-manager/, manifests/nats/) built with kubectl's
#    kustomize, and its output validated the same way;
#  - the files kube-apiserver or kubeadm read, which no API serves (the audit Policy, the
#    webhook kubeconfig, kubeadm's ClusterConfiguration), and cert-manager's objects,
#    against the schemas below: the fields of their Go types, strictly, plus the checks
#    kube-apiserver makes when it loads an audit policy;
#  - prometheus-operator's PrometheusRule (manifests/monitoring/) against the fields of its
#    CRD, strictly, and its rules with `promtool check rules` (Debian's prometheus
#    package), every alert with a severity, a summary and a description, and the alerts'
#    unit tests (hack/monitoring-alerts.test.yaml) with `promtool test rules`;
#  - the Grafana dashboards (manifests/**/*.json): they parse, and every panel queries
#    Prometheus through the dashboard's data source variable.
#
#   pip install kubernetes-validate==1.37.0   # once
#   apt-get install prometheus                 # once, for promtool
#   hack/validate-manifests.sh                # K8S_VERSION=1.31.0 to pick another version
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
  echo "validate-manifests.sh: needs kubernetes-validate: pip install kubernetes-validate==1.37.0" >&2
  exit 1
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "validate-manifests.sh: needs promtool (Debian's prometheus package) to check the alert rules" >&2
  exit 1
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "validate-manifests.sh: needs kubectl (its built-in kustomize builds the kustomizations)" >&2
  exit 1
fi

exec python3 - "${K8S_VERSION:-1.33.0}" <<'PY'
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

VERSIONS = list(dict.fromkeys([sys.argv[1], kubernetes_validate.latest_version()]))


# --- Schemas of the objects no Kubernetes API serves --------------------------------
def obj(props, required=(), extra=False):
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": extra}


def arr(items, **kw):
    return {"type": "array", "items": items, **kw}


STR = {"type": "string"}
NONEMPTY = {"type": "string", "minLength": 1}
BOOL = {"type": "boolean"}
ANY_OBJ = {"type": "object"}
STRS = arr(STR)
DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
METADATA = obj({"name": NONEMPTY, "namespace": NONEMPTY, "labels": ANY_OBJ,
                "annotations": ANY_OBJ}, required=["name"])

# audit.k8s.io/v1 Policy (k8s.io/apiserver/pkg/apis/audit/v1 types.go).
STAGES = {"enum": ["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"]}
POLICY = obj({
    "apiVersion": {"const": "audit.k8s.io/v1"},
    "kind": {"const": "Policy"},
    "metadata": ANY_OBJ,
    "omitStages": arr(STAGES),
    "omitManagedFields": BOOL,
    "rules": arr(obj({
        "level": {"enum": ["None", "Metadata", "Request", "RequestResponse"]},
        "users": STRS,
        "userGroups": STRS,
        "verbs": STRS,
        "resources": arr(obj({"group": STR, "resources": STRS, "resourceNames": STRS})),
        "namespaces": STRS,
        "nonResourceURLs": STRS,
        "omitStages": arr(STAGES),
        "omitManagedFields": BOOL,
    }, required=["level"]), minItems=1),
}, required=["apiVersion", "kind", "rules"])

# kubeconfig, clientcmd/api/v1 (what kube-apiserver's audit webhook reads).
NAMED = lambda key, inner, req=(): obj({"name": NONEMPTY, key: obj(inner, required=req)},
                                      required=["name", key])
KUBECONFIG = obj({
    "apiVersion": {"const": "v1"},
    "kind": {"const": "Config"},
    "preferences": ANY_OBJ,
    "extensions": arr(ANY_OBJ),
    "current-context": NONEMPTY,
    "clusters": arr(NAMED("cluster", {
        "server": {"type": "string", "pattern": "^https://"},
        "tls-server-name": STR,
        "certificate-authority": STR,
        "certificate-authority-data": STR,
        "insecure-skip-tls-verify": BOOL,
        "proxy-url": STR,
        "disable-compression": BOOL,
        "extensions": arr(ANY_OBJ),
    }, req=["server"]), minItems=1),
    "users": arr(NAMED("user", {
        "client-certificate": STR, "client-certificate-data": STR,
        "client-key": STR, "client-key-data": STR,
        "token": STR, "tokenFile": STR,
        "as": STR, "as-uid": STR, "as-groups": STRS, "as-user-extra": ANY_OBJ,
        "username": STR, "password": STR,
        "auth-provider": ANY_OBJ, "exec": ANY_OBJ, "extensions": arr(ANY_OBJ),
    }), minItems=1),
    "contexts": arr(NAMED("context", {
        "cluster": NONEMPTY, "user": NONEMPTY, "namespace": STR, "extensions": arr(ANY_OBJ),
    }, req=["cluster", "user"]), minItems=1),
}, required=["apiVersion", "kind", "clusters", "users", "contexts", "current-context"])

# kubeadm.k8s.io/v1beta4 ClusterConfiguration: apiServer in full, the rest as objects.
KUBEADM = obj({
    "apiVersion": {"const": "kubeadm.k8s.io/v1beta4"},
    "kind": {"const": "ClusterConfiguration"},
    "apiServer": obj({
        "extraArgs": arr(obj({"name": NONEMPTY, "value": STR}, required=["name", "value"])),
        "extraVolumes": arr(obj({
            "name": NONEMPTY, "hostPath": NONEMPTY, "mountPath": NONEMPTY, "readOnly": BOOL,
            "pathType": {"enum": ["", "DirectoryOrCreate", "Directory", "FileOrCreate",
                                  "File", "Socket", "CharDevice", "BlockDevice"]},
        }, required=["name", "hostPath", "mountPath"])),
        "extraEnvs": arr(ANY_OBJ),
        "certSANs": STRS,
    }),
    **{k: ANY_OBJ for k in ["etcd", "networking", "controllerManager", "scheduler", "dns",
                            "proxy", "featureGates"]},
    **{k: STR for k in ["kubernetesVersion", "controlPlaneEndpoint", "certificatesDir",
                        "imageRepository", "clusterName", "encryptionAlgorithm",
                        "certificateValidityPeriod", "caCertificateValidityPeriod"]},
}, required=["apiVersion", "kind"])

# cert-manager.io/v1 Issuer and Certificate (the fields of their CRDs that matter here).
ISSUER_REF = obj({"name": NONEMPTY, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                  "group": STR}, required=["name"])
USAGES = {"enum": ["signing", "digital signature", "content commitment", "key encipherment",
                   "key agreement", "data encipherment", "cert sign", "crl sign",
                   "encipher only", "decipher only", "any", "server auth", "client auth",
                   "code signing", "email protection", "s/mime", "ipsec end system",
                   "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
                   "microsoft sgc", "netscape sgc"]}
ISSUER = obj({
    "apiVersion": {"const": "cert-manager.io/v1"},
    "kind": {"enum": ["Issuer", "ClusterIssuer"]},
    "metadata": METADATA,
    "spec": {**obj({
        "selfSigned": obj({"crlDistributionPoints": STRS}),
        "ca": obj({"secretName": NONEMPTY, "crlDistributionPoints": STRS,
                   "ocspServers": STRS, "issuingCertificateURLs": STRS},
                  required=["secretName"]),
        "acme": ANY_OBJ, "vault": ANY_OBJ, "venafi": ANY_OBJ,
    }), "minProperties": 1, "maxProperties": 1},
}, required=["apiVersion", "kind", "metadata", "spec"])
CERTIFICATE = obj({
    "apiVersion": {"const": "cert-manager.io/v1"},
    "kind": {"const": "Certificate"},
    "metadata": METADATA,
    "spec": obj({
        "secretName": NONEMPTY, "issuerRef": ISSUER_REF,
        "commonName": STR, "dnsNames": STRS, "ipAddresses": STRS, "uris": STRS,
        "emailAddresses": STRS, "literalSubject": STR, "subject": ANY_OBJ,
        "duration": DURATION, "renewBefore": DURATION,
        "renewBeforePercentage": {"type": "integer"}, "isCA": BOOL,
        "usages": arr(USAGES),
        "privateKey": obj({
            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
            "size": {"type": "integer"},
            "encoding": {"enum": ["PKCS1", "PKCS8"]},
            "rotationPolicy": {"enum": ["Never", "Always"]},
        }),
        "secretTemplate": ANY_OBJ, "keystores": ANY_OBJ, "revisionHistoryLimit": {"type": "integer"},
        "additionalOutputFormats": arr(ANY_OBJ), "encodeUsagesInRequest": BOOL,
        "nameConstraints": ANY_OBJ, "otherNames": arr(ANY_OBJ),
    }, required=["secretName", "issuerRef"]),
}, required=["apiVersion", "kind", "metadata", "spec"])

# monitoring.coreos.com/v1 PrometheusRule (prometheus-operator's CRD, the rule fields).
PROM_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STR_MAP = {"type": "object", "additionalProperties": STR}
RULE = {**obj({
    "alert": NONEMPTY, "record": NONEMPTY,
    "expr": {"anyOf": [NONEMPTY, {"type": "integer"}]},
    "for": PROM_DURATION, "keep_firing_for": PROM_DURATION,
    "labels": STR_MAP, "annotations": STR_MAP,
}, required=["expr"]), "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}
PROMETHEUS_RULE = obj({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "PrometheusRule"},
    "metadata": METADATA,
    "spec": obj({
        "groups": arr(obj({
            "name": NONEMPTY, "interval": PROM_DURATION, "query_offset": PROM_DURATION,
            "limit": {"type": "integer"}, "labels": STR_MAP,
            "partial_response_strategy": {"enum": ["", "warn", "abort"]},
            "rules": arr(RULE, minItems=1),
        }, required=["name", "rules"]), minItems=1),
    }, required=["groups"]),
}, required=["apiVersion", "kind", "metadata", "spec"])

OWN = {
    ("audit.k8s.io/v1", "Policy"): POLICY,
    ("v1", "Config"): KUBECONFIG,
    ("kubeadm.k8s.io/v1beta4", "ClusterConfiguration"): KUBEADM,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
    ("cert-manager.io/v1", "ClusterIssuer"): ISSUER,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}


def policy_checks(doc):
    """What kube-apiserver's audit policy validation rejects beyond the types."""
    for i, rule in enumerate(doc.get("rules", [])):
        urls = rule.get("nonResourceURLs", [])
        if urls and (rule.get("resources") or rule.get("namespaces")):
            yield f"rules[{i}]: nonResourceURLs cannot be mixed with resources or namespaces"
        for url in urls:
            if url != "*" and (not url.startswith("/") or "*" in url[:-1]):
                yield f"rules[{i}]: nonResourceURL {url!r}: must start with / and may end with *"
        for r in rule.get("resources", []):
            if "resourceNames" in r and any("*" in n or "/" in n for n in r.get("resources", [])):
                yield f"rules[{i}]: resourceNames cannot be combined with wildcard resources"


def kubeconfig_checks(doc):
    clusters = {c["name"] for c in doc["clusters"]}
    users = {u["name"] for u in doc["users"]}
    contexts = {c["name"]: c["context"] for c in doc["contexts"]}
    current = contexts.get(doc["current-context"])
    if current is None:
        yield f"current-context {doc['current-context']!r} names no context"
    for name, ctx in contexts.items():
        if ctx["cluster"] not in clusters:
            yield f"context {name!r}: no cluster {ctx['cluster']!r}"
        if ctx["user"] not in users:
            yield f"context {name!r}: no user {ctx['user']!r}"
    for c in doc["clusters"]:
        if "?" in c["cluster"]["server"]:
            yield (f"cluster {c['name']!r}: kube-apiserver's webhook client drops the query "
                   "string of the server URL")


# promtool unit tests of the alerts; their rule_files name the extracted spec, rules.yaml.
ALERT_TESTS = "hack/monitoring-alerts.test.yaml"


def prometheus_rule_checks(doc):
    """promtool's checks of the rules (PromQL, templates), and what every alert needs."""
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            if "severity" not in rule.get("labels", {}):
                yield f"alert {rule['alert']}: no severity label"
            for key in ("summary", "description"):
                if not rule.get("annotations", {}).get(key):
                    yield f"alert {rule['alert']}: no {key} annotation"
    with tempfile.TemporaryDirectory() as tmp:
        rules = os.path.join(tmp, "rules.yaml")
        with open(rules, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": doc["spec"]["groups"]}, f)
        commands = [["promtool", "check", "rules", rules]]
        if os.path.exists(ALERT_TESTS):
            test = os.path.join(tmp, "test.yaml")
            with open(ALERT_TESTS, encoding="utf-8") as src, open(test, "w", encoding="utf-8") as dst:
                dst.write(src.read())
            commands.append(["promtool", "test", "rules", test])
        for command in commands:
            checked = subprocess.run(command, capture_output=True, text=True)
            if checked.returncode != 0:
                yield (" ".join(command[:3]) + ": " +
                       " ".join((checked.stdout + checked.stderr).replace(tmp, "").split()))


SEMANTIC = {("audit.k8s.io/v1", "Policy"): policy_checks, ("v1", "Config"): kubeconfig_checks,
            ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_rule_checks}


def dashboard_checks(path):
    """A Grafana dashboard: parses, and every panel queries Prometheus through the
    dashboard's data source variable."""
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except ValueError as e:
        yield f"{path}: not JSON: {e}"
        return
    for key in ("title", "uid", "panels"):
        if not dash.get(key):
            yield f"{path}: no {key}"
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(set(ids)) != len(ids):
        yield f"{path}: panel ids are not unique"
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            continue
        where = f"{path}: panel {p.get('title')!r}"
        uid = p.get("datasource", {}).get("uid", "")
        if not uid.startswith("${") or uid[2:-1] not in variables:
            yield f"{where}: data source {uid!r} is not a variable of the dashboard"
        if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
            yield f"{where}: a target without a query"


def validate(doc, where):
    """Errors for one object (an empty list when it is valid)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return [f"{where}: not an object with apiVersion and kind"]
    key = (doc["apiVersion"], doc["kind"])
    what = f"{where}: {doc['kind']} {doc.get('metadata', {}).get('name', '')}".rstrip()
    if key in OWN:
        errors = sorted(jsonschema.Draft202012Validator(OWN[key]).iter_errors(doc),
                        key=lambda e: list(e.path))
        msgs = [f"{what}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors]
        if not msgs and key in SEMANTIC:
            msgs = [f"{what}: {m}" for m in SEMANTIC[key](doc)]
        return msgs
    msgs = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path)) or "(top)"
            msgs.append(f"{what}: Kubernetes {e.version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            msgs.append(f"{what}: {e.message} (neither a Kubernetes kind nor one with a "
                        "schema in hack/validate-manifests.sh)")
    return msgs


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


files = sorted(p for pattern in ("manifests/**/*.yaml", "manifests/**/*.yml",
                                 "deploy/**/*.yaml", "deploy/**/*.yml")
               for p in glob.glob(pattern, recursive=True))
errors = []
kustomizations = []
patches = set()
for path in files:
    for doc in load(path):
        if isinstance(doc, dict) and doc.get("kind") in ("Kustomization", "Component") and \
                str(doc.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
            kustomizations.append(os.path.dirname(path) or ".")
            for p in doc.get("patches", []) + doc.get("patchesStrategicMerge", []):
                if isinstance(p, dict) and "path" in p:
                    patches.add(os.path.normpath(os.path.join(os.path.dirname(path), p["path"])))
                elif isinstance(p, str):
                    patches.add(os.path.normpath(os.path.join(os.path.dirname(path), p)))

checked_files = checked_objects = 0
for path in files:
    if os.path.normpath(path) in patches:
        continue  # a partial object: validated inside its kustomization's output
    docs = load(path)
    if any(isinstance(d, dict) and d.get("kind") in ("Kustomization", "Component") for d in docs):
        continue
    checked_files += 1
    for n, doc in enumerate(docs):
        checked_objects += 1
        errors += validate(doc, path if len(docs) == 1 else f"{path}[{n}]")

dashboards = sorted(glob.glob("manifests/**/*.json", recursive=True))
for path in dashboards:
    checked_files += 1
    errors += list(dashboard_checks(path))

for directory in kustomizations:
    built = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True)
    if built.returncode != 0:
        errors.append(f"kubectl kustomize {directory}: {built.stderr.strip()}")
        continue
    docs = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
    names = [(d.get("kind"), d.get("metadata", {}).get("namespace"), d.get("metadata", {}).get("name"))
             for d in docs]
    if len(set(names)) != len(names):
        errors.append(f"kubectl kustomize {directory}: the same object twice")
    for doc in docs:
        checked_objects += 1
        errors += validate(doc, f"kubectl kustomize {directory}")

for e in errors:
    print(f"ERROR {e}")
print(f"validate-manifests: {checked_files} files and {len(kustomizations)} kustomizations, "
      f"{checked_objects} objects, Kubernetes {' and '.join(VERSIONS)}: "
      f"{'OK' if not errors else f'{len(errors)} errors'}")
sys.exit(1 if errors else 0)
PY
