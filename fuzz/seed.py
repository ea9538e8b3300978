#!/usr/bin/env python3
"""Seed each fuzz target's corpus (fuzz/corpus/TARGET/) from the project's own inputs:
the real audit fixtures wrapped as webhook EventList bodies (the malformed ones too),
the dev token file and ABAC policy, and a few requests and queries of each kind.
Idempotent: a seed is named by its content's hash."""

import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "audit"
CORPUS = ROOT / "fuzz" / "corpus"
# libFuzzer is run with -max_len 65536: larger seeds would be cut anyway.
MAX_SEED = 65536


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_SEED:
        return
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def event_list(lines, version="audit.k8s.io/v1"):
    return '{"kind":"EventList","apiVersion":"%s","metadata":{},"items":[%s]}' % (
        version,
        ",".join(lines),
    )


def decoder_seeds():
    files = sorted(FIXTURES.glob("*.log")) + sorted((FIXTURES / "falco").glob("*.json"))
    for f in files:
        raw = f.read_text()
        lines = [l for l in raw.splitlines() if l.strip()]
        # Each file's first events one by one, and small batches.
        for line in lines[:8]:
            yield event_list([line])
        for i in range(0, min(len(lines), 40), 5):
            yield event_list(lines[i : i + 5], "audit.k8s.io/v1beta1")
        # The file as it is (a log line, not an EventList: refused).
        yield raw
    # A pretty-printed push, and bodies that must be refused.
    one = json.loads((FIXTURES / "falco" / "create_secret.json").read_text().splitlines()[0])
    yield json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [one]}, indent=2)
    yield '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":null}'
    yield '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"kind":0}]}'
    yield '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a","stage":"ResponseComplete","level":"Metadata","auditID":"b"}]}'
    yield '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a\\u0000\\"","stage":"ResponseComplete","level":"Metadata","annotations":{"audit.k8s.io/truncated":"x","z":"1"},"requestObject":{"a":[1,2.5e3,"\\n"]}}]}'
    yield '{"kind":"List","apiVersion":"v1","items":[]}'
    # What fuzzing found, kept as seeds so that every run replays it: a list with data
    # after it, an event with responseObject twice, half a surrogate pair.
    yield '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]} {"x":1}'
    yield (
        '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a","stage":"ResponseComplete",'
        '"level":"RequestResponse","responseObject":{},"requestObject":{"k":1},"responseObject":{"a":1}}]}'
    )
    yield (
        '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a","stage":"ResponseComplete",'
        '"level":"Metadata","user":{"username":"u","uid":"\\udadd"}}]}'
    )
    # A namespace's create: no objectRef.namespace, routed to the namespace it names.
    yield (
        '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a","stage":"ResponseComplete",'
        '"level":"Metadata","verb":"create","objectRef":{"resource":"namespaces","name":"foo","apiVersion":"v1"}}]}'
    )


def main():
    for body in decoder_seeds():
        put("ingest_decode", body)
        put("decode_differential", body)
        put("stream_record", body)
    for sel in [
        "verb=delete",
        "verb==delete,user.username!=bob",
        "metadata.name=a-1-responsecomplete",
        "objectRef.namespace=team-a, responseStatus.code=200",
        "stage!=ResponseStarted,level=Metadata,objectRef.apiGroup=",
        "nope=1",
        "verb",
    ]:
        put("field_selector", sel)
    for q in [
        "watch=1",
        "watch=true&resourceVersion=10&allowWatchBookmarks=true&timeoutSeconds=30",
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&watch=1",
        "limit=5&continue=abc&resourceVersion=0",
        "resourceVersion=3&resourceVersionMatch=Exact",
        "fieldSelector=verb%3Ddelete%2Cuser.username%21%3Dbob&includeObject=Object",
        "labelSelector=a%3Db",
        "timeoutSeconds=-1&limit=-5",
        # Found by fuzzing: the verb was authorized by the first `watch`, served by the last.
        "watch=1&watch=0",
        # Found by hand: a timeout beyond the deadline's clock (a 500), and its neighbours.
        "watch=1&timeoutSeconds=18446744073709551615",
        "watch=1&timeoutSeconds=9223372036854775807&limit=9223372036854775808",
        "resourceVersion=18446744073709551615&resourceVersionMatch=Exact&timeoutSeconds=0",
    ]:
        put("watch_query", q)
    # watch_query_numbers reads its input as choices and integers (arbitrary's
    # Unstructured): a few byte patterns that pick each spelling, the edge values included.
    for seed in [
        bytes([1, 7, 0, 7, 1, 7, 2, 3, 1, 7, 3, 7, 4]),
        bytes([0, 3] + [0xFF] * 16 + [2] + [0x7F] + [0xFF] * 7 + [4] + [0xFF] * 8),
        bytes([1, 0, 0, 0, 3, 0, 8, 1, 0, 2, 0, 5]),
        bytes(range(64)),
    ]:
        put("watch_query_numbers", seed)
    for r in [
        "GET /apis/audit.k8s.io/v1alpha1/namespaces/team-a/namespacedevents?watch=1\n"
        "x-remote-user: alice\nx-remote-group: devs\nx-remote-group: system:authenticated\n"
        "x-remote-extra-scopes%2fread: yes\nauthorization: Bearer abc",
        "GET /apis/audit.k8s.io/v1alpha1/events/a-1-responsecomplete\nauthorization: bearer  x y",
        "DELETE /apis/audit.k8s.io/v1alpha1/namespaces//namespacedevents\nx-remote-user-2: bob",
        "POST /ingest?source=node-1\nx-remote-user: \nx-remote-user: José",
        "GET /metrics\n",
    ]:
        put("request_identity", r)
    put("abac_policy", (ROOT / "deploy" / "dev" / "abac-policy.jsonl").read_text())
    put(
        "abac_policy",
        '{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy",'
        '"spec":{"user":"alice","namespace":"team-a","resource":"*","apiGroup":"audit.k8s.io","readonly":true}}\n',
    )
    put("abac_policy", '{"apiVersion":"v1","kind":"Policy","spec":{}}\n# comment\n\n')
    # Redaction: Secret shapes, and every fixture event's bodies.
    for body in [
        '{"kind":"Secret","data":{"a":"c2VjcmV0","b":null},"stringData":{"c":"x"}}',
        '{"kind":"SecretList","items":[{"data":{"a":"eA=="}},{"stringData":{"b":"y"}}]}',
        '{"kind":"Table","rows":[{"cells":["s"],"object":{"data":{"a":"eA=="}}}]}',
        '[{"op":"add","path":"/data","value":{"a":"eA=="}},{"op":"replace","path":"/stringData/b","value":"y"}]',
        '{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"}},"data":{"d\\u0061ta":"x"}}',
        # A number beyond f64 (JSON, not a serde_json Value), found by this target.
        '{"kind":"Secret","data":{"a":"eA=="},"ports":[{"port":6E443}]}',
        # A JSON Patch operation naming `path` twice, the last a Secret's key (found by
        # this target: the value had been copied).
        '[{"op":"add","path":"place","path":"/stringData/b","value":"y"}]',
    ]:
        put("redaction", body)
    for line in (FIXTURES / "all-events.jsonl").read_text().splitlines():
        event = json.loads(line)
        for key in ("requestObject", "responseObject"):
            if key in event:
                put("redaction", json.dumps(event[key], separators=(",", ":")))
    put("token_file", (ROOT / "deploy" / "dev" / "tokens.csv").read_text())
    put("token_file", 'tok,user,uid,"g1,g2"\n,empty,uid\nshort,row\n')
    put("token_file", 'a,"multi\nline",uid\n"",x,y\n')


if __name__ == "__main__":
    main()
