#!/usr/bin/env python3
"""Replay audit-log files (one JSON Event per line) to kube-audit-stream's /ingest, batched
into audit.k8s.io/v1 EventLists exactly as kube-apiserver's audit webhook backend sends them.

    python3 hack/push-events.py --server https://127.0.0.1:8443 tests/fixtures/audit/audit2rbac-demo.log

Standard library only, so it runs on any machine with python3.
"""
import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request


def batches(paths, size):
    batch = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as e:
                    print(f"{path}:{n}: skipped, not JSON: {e}", file=sys.stderr)
                    continue
                batch.append(event)
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="audit log files, one JSON Event per line")
    p.add_argument("--server", default="https://127.0.0.1:8443")
    p.add_argument("--source", help="?source= name of the pushing apiserver")
    p.add_argument("--token", help="bearer token (from --ingest-token-file)")
    p.add_argument("--cacert", help="CA bundle to verify the server; default: no verification (--dev)")
    p.add_argument("--cert", help="client certificate (PEM) for ingest mTLS")
    p.add_argument("--key", help="client key (PEM) for ingest mTLS")
    p.add_argument("--batch", type=int, default=400, help="events per EventList (kube-apiserver's default 400)")
    args = p.parse_args()

    ctx = ssl.create_default_context(cafile=args.cacert) if args.cacert else ssl._create_unverified_context()
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    url = args.server.rstrip("/") + "/ingest"
    if args.source:
        url += "?" + urllib.parse.urlencode({"source": args.source})
    total = 0
    for batch in batches(args.files, args.batch):
        body = json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": batch}).encode()
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        if args.token:
            req.add_header("Authorization", "Bearer " + args.token)
        try:
            with urllib.request.urlopen(req, context=ctx) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            print(f"push failed: HTTP {e.code}: {e.read().decode(errors='replace')}", file=sys.stderr)
            return 1
        except urllib.error.URLError as e:
            print(f"push failed: {e.reason}", file=sys.stderr)
            return 1
        total += len(batch)
    if total == 0:
        print(f"push failed: no audit events (JSON lines) in {', '.join(args.files)}", file=sys.stderr)
        return 1
    print(f"pushed {total} events to {url}")
    return 0


if __name__ == "__main__":
    import urllib.parse

    sys.exit(main())
