#!/usr/bin/python3
"""Drives the real tokenwatch-collector binary from outside the C++ code base.

mode "python-client": a gRPC client not written here (Debian's python3-grpcio, with message
classes that protoc generates at test time) streams a finding, lists it, and sends garbage
bytes to every method to prove the server answers with an error and keeps serving.

mode "cli": tokenwatchctl and the collector's own flags, as an operator uses them.

mode "tls": the collector with --tls-cert/--tls-key/--tls-client-ca and certificates from
collector/tls/make-test-ca.sh; the Python client with its node's certificate streams and lists,
without a certificate or claiming another node's name it is refused.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

FAILURES = []
PASSED = 0


def check(cond, what):
    global PASSED
    if cond:
        PASSED += 1
    else:
        FAILURES.append(what)
        print("FAIL: " + what, file=sys.stderr)


class Collector:
    """A tokenwatch-collector on 127.0.0.1 with a free port and a temporary database."""

    def __init__(self, binary, tmp, extra=()):
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--db", os.path.join(tmp, "collector.db")]
            + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("collector did not start: %r %s" % (line, self.proc.stderr.read()))
        self.port = int(m.group(1))
        self.address = "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def generate_stubs(protoc, proto_dir, out_dir):
    subprocess.run([protoc, "-I", proto_dir, "--python_out", out_dir,
                    "tokenwatch/v1/finding.proto", "tokenwatch/v1/collector.proto"], check=True)
    sys.path.insert(0, out_dir)
    from tokenwatch.v1 import collector_pb2, finding_pb2  # noqa: E402
    return collector_pb2, finding_pb2


def make_finding(finding_pb2, finding_id):
    f = finding_pb2.Finding()
    f.id = finding_id
    f.node = "py-node"
    f.time.GetCurrentTime()
    f.last_seen.CopyFrom(f.time)
    f.count = 1
    f.rule_id = "TW010"
    f.rule_name = "token-used-apiserver"
    f.severity = finding_pb2.SEVERITY_CRITICAL
    f.summary = "curl read the token and called the API server"
    f.mitre.append("T1528")
    f.token.owner.namespace = "payments"
    f.token.owner.name = "api-0"
    f.token.service_account = "api"
    f.process.pid = 77
    f.process.exe = "/usr/bin/curl"
    f.process.argv.extend(["curl", "-H", "Authorization: Bearer <redacted-jwt>"])
    parent = f.ancestors.add()
    parent.pid = 70
    parent.exe = "/bin/bash"
    conn = f.connections.add()
    conn.address = "10.96.0.1"
    conn.port = 443
    conn.target = finding_pb2.TARGET_KIND_APISERVER
    return f


def run_python_client(args, tmp):
    import grpc
    collector_pb2, finding_pb2 = generate_stubs(args.protoc, args.proto_dir, tmp)
    collector = Collector(args.collector, tmp)
    try:
        channel = grpc.insecure_channel(collector.address)
        grpc.channel_ready_future(channel).result(timeout=10)
        list_findings = channel.unary_unary(
            "/tokenwatch.v1.Collector/ListFindings",
            request_serializer=collector_pb2.ListFindingsRequest.SerializeToString,
            response_deserializer=collector_pb2.ListFindingsResponse.FromString)
        report = channel.stream_stream(
            "/tokenwatch.v1.Collector/Report",
            request_serializer=collector_pb2.ReportRequest.SerializeToString,
            response_deserializer=collector_pb2.ReportResponse.FromString)

        check(len(list_findings(collector_pb2.ListFindingsRequest(), timeout=10).findings) == 0,
              "a fresh collector lists no findings")

        finding_id = str(uuid.uuid4())
        requests = [
            collector_pb2.ReportRequest(hello=collector_pb2.Hello(
                node="py-node", agent_id="py-agent", version="test")),
            collector_pb2.ReportRequest(finding=collector_pb2.SequencedFinding(
                sequence=1, finding=make_finding(finding_pb2, finding_id))),
        ]
        acks = [r.ack.sequence for r in report(iter(requests), timeout=10)]
        check(acks and acks[-1] == 1, "python client's finding is acked with sequence 1: %r" % acks)

        listed = list_findings(collector_pb2.ListFindingsRequest(rule_id="TW010", limit=10),
                               timeout=10).findings
        check([f.id for f in listed] == [finding_id], "the streamed finding is listed")
        check(listed and listed[0].connections[0].port == 443, "the finding is stored in full")

        # Garbage: bytes that are not a ReportRequest, sent as one.
        raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
        garbage = [b"\xff\xff\xff\xff\xff\xff\x01", b"\x0a\xff\xff\xff\xff\x0f", os.urandom(512)]
        for payload in garbage:
            try:
                list(channel.stream_stream("/tokenwatch.v1.Collector/Report", **raw)(
                    iter([payload]), timeout=10))
                check(False, "garbage on Report must fail")
            except grpc.RpcError as e:
                check(e.code() != grpc.StatusCode.OK, "garbage on Report gets an error status")
            for method in ("ListFindings", "GetFinding"):
                try:
                    channel.unary_unary("/tokenwatch.v1.Collector/" + method, **raw)(
                        payload, timeout=10)
                    check(False, "garbage on %s must fail" % method)
                except grpc.RpcError as e:
                    check(e.code() != grpc.StatusCode.OK, "garbage on %s gets an error" % method)

        # A stream whose first message is a finding is refused with INVALID_ARGUMENT.
        try:
            list(report(iter(requests[1:]), timeout=10))
            check(False, "a stream without Hello must fail")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                  "a stream without Hello gets INVALID_ARGUMENT, got %s" % e.code())

        check(collector.proc.poll() is None, "the collector survives garbage")
        check(len(list_findings(collector_pb2.ListFindingsRequest(), timeout=10).findings) == 1,
              "the collector still serves after garbage")
        channel.close()
    finally:
        rc = collector.stop()
    check(rc == 0, "the collector exits 0 on SIGTERM (got %r)" % rc)


def run_cli(args, tmp):
    import grpc
    collector_pb2, finding_pb2 = generate_stubs(args.protoc, args.proto_dir, tmp)

    def run(cmd):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    # Bad flags: non-zero, one clear line.
    for cmd in ([args.collector, "--no-such-flag"],
                [args.collector, "--listen", "no-port-here"],
                [args.ctl, "--limit", "0", "findings"],
                [args.ctl, "--severity", "urgent", "findings"],
                [args.ctl, "--since", "yesterday", "findings"],
                [args.ctl, "frobnicate"]):
        r = run(cmd)
        check(r.returncode != 0, "%s exits non-zero" % cmd)
        check(len(r.stderr.strip().splitlines()) == 1, "%s prints one line: %r" % (cmd, r.stderr))

    # Unreachable collector: port 1 on loopback has no listener.
    r = run([args.ctl, "--collector", "127.0.0.1:1", "findings"])
    check(r.returncode != 0 and "cannot reach the collector" in r.stderr,
          "unreachable collector is reported: %r" % r.stderr)

    collector = Collector(args.collector, tmp)
    try:
        channel = grpc.insecure_channel(collector.address)
        report = channel.stream_stream(
            "/tokenwatch.v1.Collector/Report",
            request_serializer=collector_pb2.ReportRequest.SerializeToString,
            response_deserializer=collector_pb2.ReportResponse.FromString)
        ids = [str(uuid.uuid4()) for _ in range(3)]
        requests = [collector_pb2.ReportRequest(hello=collector_pb2.Hello(
            node="py-node", agent_id="py-agent"))]
        for seq, fid in enumerate(ids, start=1):
            f = make_finding(finding_pb2, fid)
            if seq == 2:
                f.severity = finding_pb2.SEVERITY_LOW
                f.node = "other-node"
            requests.append(collector_pb2.ReportRequest(
                finding=collector_pb2.SequencedFinding(sequence=seq, finding=f)))
        acks = [r.ack.sequence for r in report(iter(requests), timeout=10)]
        check(acks and acks[-1] == 3, "three findings acked: %r" % acks)
        channel.close()

        ctl = [args.ctl, "--collector", collector.address]
        r = run(ctl + ["findings", "--json", "--since", "1h"])
        check(r.returncode == 0, "findings --json succeeds: %r" % r.stderr)
        lines = r.stdout.strip().splitlines()
        check(len(lines) == 3, "findings --json prints one line per finding: %r" % r.stdout)
        parsed = [json.loads(line) for line in lines]
        check(all("ruleId" in p and "lastSeen" in p for p in parsed),
              "JSON uses the proto3 lowerCamelCase names")
        check(sorted(p["id"] for p in parsed) == sorted(ids), "JSON carries the ids")

        r = run(ctl + ["findings", "--severity", "high", "--json"])
        check(len(r.stdout.strip().splitlines()) == 2, "--severity high filters: %r" % r.stdout)
        r = run(ctl + ["--node", "other-node", "findings", "--json"])  # flags before subcommand
        check(len(r.stdout.strip().splitlines()) == 1, "--node filters: %r" % r.stdout)
        r = run(ctl + ["findings", "--namespace", "nobody"])
        check(r.returncode == 0 and r.stdout == "", "no matches prints no table: %r" % r.stdout)

        r = run(ctl + ["findings"])
        rows = r.stdout.strip().splitlines()
        check(r.returncode == 0 and rows[0].split()[:4] == ["TIME", "NODE", "RULE", "SEVERITY"],
              "findings prints a table with a header: %r" % r.stdout)
        check(len(rows) == 4 and "payments/api-0" in rows[1] and "/usr/bin/curl" in rows[1],
              "the table shows owner pod and process: %r" % r.stdout)

        r = run(ctl + ["finding", ids[0]])
        check(r.returncode == 0, "finding ID succeeds: %r" % r.stderr)
        out = r.stdout
        check(out.find("/bin/bash") < out.find("/usr/bin/curl") and "<== actor" in out,
              "lineage goes from the parent down to the actor: %r" % out)
        check("10.96.0.1:443" in out and "Service account:" in out,
              "the finding shows token claims and connections")
        r = run(ctl + ["finding", str(uuid.uuid4())])
        check(r.returncode != 0 and "no finding" in r.stderr, "an unknown id is reported")
        r = run(ctl + ["findings", "show", ids[0]])
        check(r.returncode == 0 and "<== actor" in r.stdout, "findings show ID works")
        r = run(ctl + ["findings", "list", "--json", "--limit", "2"])
        check(len(r.stdout.strip().splitlines()) == 2, "findings list --limit 2: %r" % r.stdout)
        r = run(ctl + ["findings", "list", "--json", "--pod", "api-0", "--until", "0s"])
        check(len(r.stdout.strip().splitlines()) == 3, "--pod and --until filter: %r" % r.stdout)
        r = run(ctl + ["findings", "list", "--json", "--until", "1h"])
        check(r.returncode == 0 and r.stdout == "", "--until excludes newer: %r" % r.stdout)

        # findings watch: a live tail that prints what arrives after it started.
        watch = subprocess.Popen(ctl + ["findings", "watch", "--json", "--rule", "TW010"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        channel = grpc.insecure_channel(collector.address)
        report = channel.stream_stream(
            "/tokenwatch.v1.Collector/Report",
            request_serializer=collector_pb2.ReportRequest.SerializeToString,
            response_deserializer=collector_pb2.ReportResponse.FromString)
        live_id = str(uuid.uuid4())
        acks = [a.ack.sequence for a in report(iter([
            collector_pb2.ReportRequest(hello=collector_pb2.Hello(node="py-node",
                                                                  agent_id="py-agent")),
            collector_pb2.ReportRequest(finding=collector_pb2.SequencedFinding(
                sequence=1, finding=make_finding(finding_pb2, live_id)))]), timeout=10)]
        check(acks and acks[-1] == 1, "live finding acked")
        channel.close()
        line = watch.stdout.readline()
        watch.send_signal(signal.SIGTERM)
        watch.wait(timeout=10)
        check(line and json.loads(line)["id"] == live_id, "findings watch prints it: %r" % line)
    finally:
        rc = collector.stop()
    check(rc == 0, "the collector exits 0 on SIGTERM (got %r)" % rc)


def run_tls(args, tmp):
    import grpc
    collector_pb2, finding_pb2 = generate_stubs(args.protoc, args.proto_dir, tmp)
    ca = os.path.join(tmp, "ca")
    subprocess.run(["sh", args.make_ca, ca, "py-node", "other-node"], check=True,
                   capture_output=True)

    def pem(name):
        with open(os.path.join(ca, name), "rb") as f:
            return f.read()

    collector = Collector(args.collector, tmp, [
        "--tls-cert", os.path.join(ca, "collector.pem"),
        "--tls-key", os.path.join(ca, "collector.key"),
        "--tls-client-ca", os.path.join(ca, "ca.pem")])
    try:
        def channel_with(cert):
            creds = grpc.ssl_channel_credentials(
                root_certificates=pem("ca.pem"),
                private_key=pem(cert + ".key") if cert else None,
                certificate_chain=pem(cert + ".pem") if cert else None)
            return grpc.secure_channel(collector.address, creds)

        def stream(channel, node, finding_id):
            report = channel.stream_stream(
                "/tokenwatch.v1.Collector/Report",
                request_serializer=collector_pb2.ReportRequest.SerializeToString,
                response_deserializer=collector_pb2.ReportResponse.FromString)
            f = make_finding(finding_pb2, finding_id)
            f.node = node
            return [r.ack.sequence for r in report(iter([
                collector_pb2.ReportRequest(hello=collector_pb2.Hello(
                    node=node, agent_id="py-agent")),
                collector_pb2.ReportRequest(finding=collector_pb2.SequencedFinding(
                    sequence=1, finding=f))]), timeout=10)]

        def list_ids(channel):
            list_findings = channel.unary_unary(
                "/tokenwatch.v1.Collector/ListFindings",
                request_serializer=collector_pb2.ListFindingsRequest.SerializeToString,
                response_deserializer=collector_pb2.ListFindingsResponse.FromString)
            return [f.id for f in list_findings(collector_pb2.ListFindingsRequest(),
                                                timeout=10).findings]

        good = channel_with("py-node")
        good_id = str(uuid.uuid4())
        check(stream(good, "py-node", good_id) == [1], "the node's own certificate is accepted")
        check(list_ids(good) == [good_id], "and its finding is listed back over TLS")

        try:
            stream(channel_with(None), "py-node", str(uuid.uuid4()))
            check(False, "a client without a certificate must be refused")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAVAILABLE,
                  "no client certificate: refused in the handshake, got %s" % e.code())
        try:
            stream(channel_with("other-node"), "py-node", str(uuid.uuid4()))
            check(False, "a client claiming another node's name must be refused")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.PERMISSION_DENIED,
                  "another node's name: PERMISSION_DENIED, got %s" % e.code())
        try:
            # The right certificate and Hello, but a finding that names another node.
            f_id = str(uuid.uuid4())
            report = good.stream_stream(
                "/tokenwatch.v1.Collector/Report",
                request_serializer=collector_pb2.ReportRequest.SerializeToString,
                response_deserializer=collector_pb2.ReportResponse.FromString)
            f = make_finding(finding_pb2, f_id)
            f.node = "other-node"
            list(report(iter([collector_pb2.ReportRequest(hello=collector_pb2.Hello(
                node="py-node", agent_id="py-agent")), collector_pb2.ReportRequest(
                    finding=collector_pb2.SequencedFinding(sequence=1, finding=f))]), timeout=10))
            check(False, "a finding for another node must be refused")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.PERMISSION_DENIED,
                  "finding for another node: PERMISSION_DENIED, got %s" % e.code())
        check(list_ids(good) == [good_id], "nothing refused was stored")

        ctl = [args.ctl, "--collector", collector.address, "--tls-ca", os.path.join(ca, "ca.pem"),
               "--tls-cert", os.path.join(ca, "operator.pem"),
               "--tls-key", os.path.join(ca, "operator.key")]
        r = subprocess.run(ctl + ["findings", "list", "--json"], capture_output=True, text=True,
                           timeout=30)
        check(r.returncode == 0 and good_id in r.stdout, "tokenwatchctl lists over mutual TLS")
        r = subprocess.run(ctl[:3] + ["findings", "list"], capture_output=True, text=True,
                           timeout=30)
        check(r.returncode != 0, "tokenwatchctl without TLS is refused")
        good.close()
    finally:
        rc = collector.stop()
    check(rc == 0, "the collector exits 0 on SIGTERM (got %r)" % rc)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["python-client", "cli", "tls"])
    parser.add_argument("--collector", required=True)
    parser.add_argument("--ctl")
    parser.add_argument("--protoc", required=True)
    parser.add_argument("--proto-dir", required=True)
    parser.add_argument("--make-ca")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tw-collector-peer-") as tmp:
        if args.mode == "python-client":
            run_python_client(args, tmp)
        elif args.mode == "tls":
            run_tls(args, tmp)
        else:
            run_cli(args, tmp)
    print("%d passed, %d failed" % (PASSED, len(FAILURES)))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
