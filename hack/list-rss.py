#!/usr/bin/env python3
"""Peak memory of LISTs of a full window, for BENCHMARKS.md ("LIST memory").

For each case, a fresh `serve --dev` of the binary given (so that any build, an older one
included, can be measured the same way) on a loopback port, its window filled with
--mib MiB of team-a events (the mixed real fixture, each event given a unique auditID and
team-a), then:

- one:      one LIST of the whole window, read to the end by this script;
- unread30: 30 LISTs of the whole window on 30 connections that never read a byte,
            held for --hold seconds (under the 60 s stall limit);

each as an EventList (`json`) and as a Table with its objects (`table`,
`includeObject=Object`, the largest Table). Printed per case: the server's
RSS once the window is full, its peak (VmHWM) and the peak minus the full-window RSS,
which is what the LISTs cost.

    python3 hack/list-rss.py target/release/kube-audit-stream [--mib 66]

Standard library only; it talks to 127.0.0.1 only and stops the servers it starts.
"""
import argparse
import json
import pathlib
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "audit" / "all-events.jsonl"
ADMIN = "admin-dev-token"
TEAM_A = "/apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def status_kib(pid, key):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def context():
    return ssl._create_unverified_context()


def request(port, method, path, body=None, headers=None):
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=body, method=method)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, context=context(), timeout=120) as resp:
        return resp.read()


def batches(mib):
    """EventList bodies of team-a events adding up to about `mib` MiB of events."""
    lines = [l for l in FIXTURE.read_text().splitlines() if l.strip()]
    events = [json.loads(l) for l in lines]
    want, total, n, batch = mib << 20, 0, 0, []
    while total < want:
        for e in events:
            e = dict(e)
            e["auditID"] = f"rss-{n}"
            ref = dict(e.get("objectRef") or {})
            ref["namespace"] = "team-a"
            e["objectRef"] = ref
            n += 1
            batch.append(e)
            total += len(json.dumps(e))
            if len(batch) == 400 or total >= want:
                yield json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": batch}).encode()
                batch = []
            if total >= want:
                return


def start(binary, port, mib):
    args = [
        binary, "serve", "--dev", "--bind-address", "127.0.0.1", "--secure-port", str(port),
        "--window-bytes", str((mib + 64) << 20), "--window-events", "10000000",
        "--max-event-bytes", str(4 << 20),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            request(port, "GET", "/readyz")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not get ready")


def unread_list(port, path, accept):
    """A LIST whose response is never read: the request sent, the socket left alone."""
    raw = socket.create_connection(("127.0.0.1", port))
    # A small receive buffer, so that the kernel holds little of the response for us.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s = context().wrap_socket(raw, server_hostname="localhost")
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN}\r\n"
        f"Accept: {accept}\r\n\r\n".encode()
    )
    return s


def case(binary, port, mib, form, how, hold):
    proc = start(binary, port, mib)
    try:
        for body in batches(mib):
            request(port, "POST", "/ingest", body, {"Content-Type": "application/json"})
        time.sleep(1)
        full = status_kib(proc.pid, "VmRSS")
        accept = TABLE if form == "table" else "application/json"
        path = TEAM_A + ("?includeObject=Object" if form == "table" else "")
        if how == "one":
            body = request(port, "GET", path, headers={"Authorization": f"Bearer {ADMIN}", "Accept": accept})
            assert len(body) > (mib << 20) // 4, len(body)
        else:
            socks = [unread_list(port, path, accept) for _ in range(30)]
            time.sleep(hold)
            for s in socks:
                s.close()
        peak = status_kib(proc.pid, "VmHWM")
        return full, peak
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("--mib", type=int, default=66, help="MiB of team-a events in the window")
    p.add_argument("--port", type=int, default=18443)
    p.add_argument("--hold", type=float, default=10.0, help="seconds the 30 unread LISTs are held")
    args = p.parse_args()
    print(f"| binary | LIST | form | RSS, window full (MiB) | peak RSS (MiB) | peak − full (MiB) |")
    print("|---|---|---|---|---|---|")
    for how in ["one", "unread30"]:
        for form in ["json", "table"]:
            full, peak = case(args.binary, args.port, args.mib, form, how, args.hold)
            print(
                f"| {pathlib.Path(args.binary).name} | {how} | {form} | {full / 1024:.0f} | {peak / 1024:.0f} "
                f"| {(peak - full) / 1024:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
