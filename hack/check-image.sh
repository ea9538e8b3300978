#!/usr/bin/env bash
# Checks a built image without a container runtime: its config (a numeric non-root user,
# the entrypoint, nothing in it but the binary), then its root filesystem started as that
# user under chroot, with no /proc, /dev or /etc (harsher than any runtime): the default
# command prints the help, and `serve --dev` answers /livez, takes an EventList and
# streams it to a watcher who sees only her namespace, and SIGTERM stops it cleanly.
#
#   hack/check-image.sh IMAGE        (needs buildah, root, curl, python3)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
image=$1
fail() { echo "check-image.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (it runs the image's root filesystem with chroot)"

work=$(mktemp -d)
ctr=
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1. The image config.
buildah inspect --type image "$image" >"$work/inspect.json"
python3 - "$work/inspect.json" >"$work/config.sh" <<'EOF'
import json, shlex, sys
config = json.load(open(sys.argv[1]))["OCIv1"]["config"]
user = config.get("User", "")
uid, _, gid = user.partition(":")
if not (uid.isdigit() and gid.isdigit()) or uid == "0":
    sys.exit(f"check-image.sh: USER is {user!r}, not a numeric non-root uid:gid")
entrypoint = config.get("Entrypoint") or []
if entrypoint != ["/usr/local/bin/kube-audit-stream"]:
    sys.exit(f"check-image.sh: ENTRYPOINT is {entrypoint}")
print(f"user={shlex.quote(user)}")
print(f"entrypoint={shlex.quote(entrypoint[0])}")
print("cmd=(" + " ".join(shlex.quote(c) for c in config.get("Cmd") or []) + ")")
EOF
user='' entrypoint='' cmd=()
# shellcheck source=/dev/null
source "$work/config.sh"
echo "image config: user $user, entrypoint $entrypoint, cmd ${cmd[*]}"

# 2. Its root filesystem: the binary and nothing else.
ctr=$(buildah from --quiet "$image")
rootfs=$(buildah mount "$ctr")
files=$(cd "$rootfs" && find . -type f | sort)
[ "$files" = "./usr/local/bin/kube-audit-stream" ] || fail "the image holds more than the binary: $files"
echo "image content: $(du -h "$rootfs$entrypoint" | cut -f1) $entrypoint"

# 3. The default command.
chroot --userspec="$user" "$rootfs" "$entrypoint" "${cmd[@]}" >"$work/help" || fail "'${cmd[*]}' exited $?"
grep -q -- '--secure-port' "$work/help" || fail "'${cmd[*]}' did not print the help"

# 4. serve --dev: live, ingest, watch.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=https://127.0.0.1:$port
# $! is the server's own pid: chroot execs it.
chroot --userspec="$user" "$rootfs" "$entrypoint" serve --dev --secure-port "$port" 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do
  [ "$(curl -sk --max-time 2 "$base/livez" || true)" = ok ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; fail "the server exited"; }
  sleep 0.2
done
[ "$(curl -sk --max-time 2 "$base/livez")" = ok ] || { cat "$work/server.log" >&2; fail "no /livez"; }

python3 hack/push-events.py --server "$base" deploy/dev/sample-events.jsonl
# resourceVersion=0 replays the window; timeoutSeconds ends the watch.
curl -sSNk --max-time 20 -H 'Authorization: Bearer alice-dev-token' \
  "$base/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1&resourceVersion=0&timeoutSeconds=2" \
  >"$work/watch"
python3 - "$work/watch" deploy/dev/sample-events.jsonl <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
pushed = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
want = sum(1 for e in pushed if (e.get("objectRef") or {}).get("namespace") == "team-a")
got = [l for l in lines if l["type"] == "ADDED"]
if want == 0 or len(got) != want or any(l["object"]["metadata"]["namespace"] != "team-a" for l in got):
    sys.exit(f"check-image.sh: alice's watch of team-a got {len(got)} events, want {want}: {lines}")
print(f"watch: {len(got)} team-a events of {len(pushed)} pushed")
EOF

# 5. SIGTERM (what the kubelet sends, to a process that is pid 1 in its container and so
# has no default signal handling) stops it cleanly.
kill -TERM "$server"
for _ in $(seq 100); do
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$server" 2>/dev/null && fail "the server ignored SIGTERM"
status=0
wait "$server" || status=$?
server=
[ "$status" -eq 0 ] || { cat "$work/server.log" >&2; fail "the server exited $status on SIGTERM"; }
echo "image $image: ok"
