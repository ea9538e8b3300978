#!/usr/bin/env bash
# Makes the certificates kube-audit-stream needs in a cluster, with openssl:
#
#   serving-ca.crt, serving-ca.key   CA of the serving certificate: the APIService's caBundle,
#                                    and certificate-authority in every kube-apiserver's
#                                    audit webhook kubeconfig
#   serving.crt, serving.key         serving certificate for <svc>.<ns>.svc and
#                                    <svc>.<ns>.svc.cluster.local (plus --san, --localhost)
#   ingest-ca.crt, ingest-ca.key     CA of the kube-apiservers' ingest client certificates
#                                    (the server's --ingest-client-ca-file)
#   NAME.crt, NAME.key               one ingest client certificate per kube-apiserver:
#                                    CN=NAME (listed in --ingest-allowed-names; it names the
#                                    source of each event), extendedKeyUsage clientAuth
#
# Existing files are kept (delete one to issue it again), so running it again with a new
# NAME adds a client certificate signed by the same ingest CA. Keys are ECDSA P-256 in
# PKCS#8, readable by their owner only, and OUT_DIR gets a .gitignore of "*" so that they
# never end up in a commit.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: hack/gen-certs.sh [options] OUT_DIR [APISERVER_NAME...]

  OUT_DIR          where to write (created if missing; existing files are kept)
  APISERVER_NAME   one ingest client certificate per kube-apiserver, CN=APISERVER_NAME
                   (use the control-plane node names)

options:
  --service NAME   Service name (default kube-audit-stream, or $SERVICE)
  --namespace NS   namespace (default kube-audit-stream, or $NAMESPACE)
  --san NAME       extra subjectAltName on the serving certificate, DNS name or IP
                   address (repeatable)
  --localhost      add localhost, 127.0.0.1 and ::1 to the serving certificate (local
                   tests, kubectl port-forward)
  --days N         validity of the serving and client certificates (default 365)
  --ca-days N      validity of the two CAs (default 3650)
EOF
}

service=${SERVICE:-kube-audit-stream}
namespace=${NAMESPACE:-kube-audit-stream}
days=365
ca_days=3650
localhost=false
out=""
extra_sans=()
names=()

need_value() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then
    echo "gen-certs.sh: $1 needs a value" >&2
    exit 2
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --service) need_value "$@"; service=$2; shift 2 ;;
    --service=*) service=${1#*=}; shift ;;
    --namespace) need_value "$@"; namespace=$2; shift 2 ;;
    --namespace=*) namespace=${1#*=}; shift ;;
    --san) need_value "$@"; extra_sans+=("$2"); shift 2 ;;
    --san=*) extra_sans+=("${1#*=}"); shift ;;
    --localhost) localhost=true; shift ;;
    --days) need_value "$@"; days=$2; shift 2 ;;
    --days=*) days=${1#*=}; shift ;;
    --ca-days) need_value "$@"; ca_days=$2; shift 2 ;;
    --ca-days=*) ca_days=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "gen-certs.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      if [ -z "$out" ]; then out=$1; else names+=("$1"); fi
      shift
      ;;
  esac
done
for arg in "$@"; do
  if [ -z "$out" ]; then out=$arg; else names+=("$arg"); fi
done

if [ -z "$out" ]; then
  usage >&2
  exit 2
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "gen-certs.sh: openssl is required" >&2
  exit 1
fi

dns_label='^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'
for v in "$service" "$namespace"; do
  if ! [[ $v =~ $dns_label ]]; then
    echo "gen-certs.sh: $v is not a DNS label (lower case letters, digits and '-')" >&2
    exit 2
  fi
done
for v in "$days" "$ca_days"; do
  if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
    echo "gen-certs.sh: $v is not a number of days" >&2
    exit 2
  fi
done
for name in "${names[@]+"${names[@]}"}"; do
  # The name becomes a file name and a certificate subject: keep it to what node names use.
  if ! [[ $name =~ ^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$ ]]; then
    echo "gen-certs.sh: $name: use letters, digits, '-', '.' and '_' (a node name)" >&2
    exit 2
  fi
  case "$name" in
    serving | serving-ca | ingest-ca)
      echo "gen-certs.sh: $name: reserved for the server's own files" >&2
      exit 2
      ;;
  esac
done

mkdir -p "$out"
# Private keys: keep them out of any git repository the directory happens to be in.
[ -e "$out/.gitignore" ] || printf '*\n' >"$out/.gitignore"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

written=()
note() { written+=("$(printf '  %-34s %s' "$1" "$2")"); }

new_key() {
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -pkeyopt ec_param_enc:named_curve -out "$1" 2>/dev/null)
}

serial() { echo "0x$(openssl rand -hex 16)"; }

# make_ca BASE CN: a self-signed CA that may sign end-entity certificates only.
make_ca() {
  local base=$1 cn=$2
  if [ -s "$out/$base.crt" ] && [ -s "$out/$base.key" ]; then
    note "$base.crt, $base.key" "kept"
    return
  fi
  new_key "$out/$base.key"
  cat >"$tmp/$base.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = $cn
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -new -sha256 -key "$out/$base.key" -config "$tmp/$base.cnf" \
    -days "$ca_days" -set_serial "$(serial)" -out "$out/$base.crt" 2>/dev/null
  note "$base.crt, $base.key" "new CA: CN=$cn"
}

# issue BASE CN CA EXTENSIONS: an end-entity certificate signed by CA.
issue() {
  local base=$1 cn=$2 ca=$3 extensions=$4 what=$5
  if [ -s "$out/$base.crt" ] && [ -s "$out/$base.key" ]; then
    note "$base.crt, $base.key" "kept"
    return
  fi
  new_key "$out/$base.key"
  openssl req -new -sha256 -key "$out/$base.key" -subj "/CN=$cn" -out "$tmp/$base.csr" 2>/dev/null
  printf '%s\n' \
    "basicConstraints = critical, CA:FALSE" \
    "keyUsage = critical, digitalSignature" \
    "subjectKeyIdentifier = hash" \
    "authorityKeyIdentifier = keyid" \
    "$extensions" >"$tmp/$base.ext"
  openssl x509 -req -sha256 -in "$tmp/$base.csr" -CA "$out/$ca.crt" -CAkey "$out/$ca.key" \
    -set_serial "$(serial)" -days "$days" -extfile "$tmp/$base.ext" -out "$out/$base.crt" 2>/dev/null
  note "$base.crt, $base.key" "new $what: CN=$cn"
}

san_entry() {
  if [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || [[ $1 == *:* ]]; then
    echo "IP:$1"
  else
    echo "DNS:$1"
  fi
}

fqdn="$service.$namespace.svc"
sans="DNS:$fqdn, DNS:$fqdn.cluster.local"
if $localhost; then
  sans="$sans, DNS:localhost, IP:127.0.0.1, IP:::1"
fi
for san in "${extra_sans[@]+"${extra_sans[@]}"}"; do
  sans="$sans, $(san_entry "$san")"
done

make_ca serving-ca "$service-serving-ca"
issue serving "$fqdn" serving-ca \
  "$(printf 'extendedKeyUsage = serverAuth\nsubjectAltName = %s' "$sans")" "serving certificate"
make_ca ingest-ca "$service-ingest-ca"
for name in "${names[@]+"${names[@]}"}"; do
  issue "$name" "$name" ingest-ca "extendedKeyUsage = clientAuth" "ingest client certificate"
done

q() { printf '%q' "$1"; }
# What the serving certificate really holds (it may have been kept from an earlier run).
served=$(openssl x509 -in "$out/serving.crt" -noout -ext subjectAltName 2>/dev/null |
  sed -n '2,$p' | tr -d ' ' | sed 's/IPAddress:/IP:/g')

echo "Wrote to $out/:"
printf '%s\n' "${written[@]}"
echo "  serving certificate names: ${served:-?}"
if [ "$service/$namespace" != kube-audit-stream/kube-audit-stream ]; then
  echo
  echo "Note: manifests/ and deploy/ name Service kube-audit-stream in namespace"
  echo "kube-audit-stream; change them to $service in $namespace to match."
fi
cat <<EOF

Secrets and the APIService caBundle (safe to run again after renewing):

  kubectl create namespace $namespace --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n $namespace create secret tls $service-serving-cert \\
    --cert=$(q "$out/serving.crt") --key=$(q "$out/serving.key") --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n $namespace create secret generic $service-ingest-ca \\
    --from-file=ca.crt=$(q "$out/ingest-ca.crt") --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -k manifests/
  kubectl patch apiservice v1alpha1.audit.k8s.io --type=merge \\
    -p "{\\"spec\\":{\\"caBundle\\":\\"\$(base64 < $(q "$out/serving-ca.crt") | tr -d '\\n')\\"}}"
EOF
if [ ${#names[@]} -gt 0 ]; then
  cat <<EOF

On each control-plane node, into /etc/kubernetes/audit/ (deploy/README.md):

  kube-audit-stream-ca.crt  <- $out/serving-ca.crt
EOF
  for name in "${names[@]}"; do
    echo "  ingest-client.crt, .key <- $out/$name.crt, $out/$name.key   (on node $name)"
  done
  joined=$(IFS=,; echo "${names[*]}")
  echo
  echo "and in manifests/base/deployment.yaml: --ingest-allowed-names=$joined"
fi
