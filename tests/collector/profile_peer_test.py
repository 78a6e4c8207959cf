#!/usr/bin/python3
"""The profile RPCs of the real tokenwatch-collector, driven from outside the C++ code base.

A gRPC client not written here (Debian's python3-grpcio, message classes from protoc at test
time) uploads two nodes' learned profiles; tokenwatchctl profile export merges them into one
policy entry; an upload that breaks the rules and bytes that are not a request are refused
while the collector keeps serving. Helpers come from collector_peer_test.py.

Usage: profile_peer_test.py --collector BIN --ctl BIN --protoc BIN --proto-dir DIR
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import collector_peer_test as peer  # noqa: E402
from collector_peer_test import check  # noqa: E402


def profile(collector_pb2, workload, readers, node=""):
    p = collector_pb2.LearnedProfile(namespace="payments", workload=workload,
                                     container="/app/server", service_account="api", node=node)
    for r in readers:
        p.token_readers.add(path=r)
    now = int(time.time())
    p.learning_started.seconds = now - 3600
    p.learning_ends.seconds = now - 60  # the window is over
    return p


def run(args, tmp):
    import grpc
    collector_pb2, _ = peer.generate_stubs(args.protoc, args.proto_dir, tmp)
    collector = peer.Collector(args.collector, tmp, extra=["--metrics-address", ""])
    try:
        channel = grpc.insecure_channel(collector.address)
        grpc.channel_ready_future(channel).result(timeout=10)
        upload = channel.unary_unary(
            "/tokenwatch.v1.Collector/UploadProfiles",
            request_serializer=collector_pb2.UploadProfilesRequest.SerializeToString,
            response_deserializer=collector_pb2.UploadProfilesResponse.FromString)
        list_profiles = channel.unary_unary(
            "/tokenwatch.v1.Collector/ListProfiles",
            request_serializer=collector_pb2.ListProfilesRequest.SerializeToString,
            response_deserializer=collector_pb2.ListProfilesResponse.FromString)

        for node, readers in (("node-a", ["/app/server"]),
                              ("node-b", ["/app/server", "/usr/local/bin/vault-agent"])):
            resp = upload(collector_pb2.UploadProfilesRequest(
                node=node, agent_id="py-" + node,
                profiles=[profile(collector_pb2, "api", readers)]), timeout=10)
            check(resp.stored == 1, "%s's upload stores one profile (%d)" % (node, resp.stored))
        listed = list_profiles(collector_pb2.ListProfilesRequest(namespace="payments"),
                               timeout=10).profiles
        check([p.node for p in listed] == ["node-a", "node-b"],
              "one copy per node, in node order: %r" % [p.node for p in listed])
        check(all(p.updated.seconds > 0 for p in listed), "the collector stamps each copy")

        # Refused whole, nothing changed: a duplicate workload, and another node's profile.
        for what, request in (
                ("duplicate", collector_pb2.UploadProfilesRequest(
                    node="node-a", profiles=[profile(collector_pb2, "api", ["/x"]),
                                             profile(collector_pb2, "api", ["/y"])])),
                ("other node", collector_pb2.UploadProfilesRequest(
                    node="node-a", profiles=[profile(collector_pb2, "api", ["/x"], "node-b")]))):
            try:
                upload(request, timeout=10)
                check(False, "a %s upload must fail" % what)
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                      "a %s upload gets INVALID_ARGUMENT, got %s" % (what, e.code()))
        raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for payload in (b"\xff\xff\xff\xff\xff\xff\x01", os.urandom(512)):
            for method in ("UploadProfiles", "ListProfiles"):
                try:
                    channel.unary_unary("/tokenwatch.v1.Collector/" + method, **raw)(
                        payload, timeout=10)
                    check(False, "garbage on %s must fail" % method)
                except grpc.RpcError as e:
                    check(e.code() != grpc.StatusCode.OK, "garbage on %s gets an error" % method)
        check(collector.proc.poll() is None, "the collector survives garbage")

        res = subprocess.run([args.ctl, "--collector", collector.address, "profile", "export",
                              "--workload", "a*"], capture_output=True, text=True, timeout=30)
        check(res.returncode == 0, "profile export exits 0: %s" % res.stderr)
        out = res.stdout
        check(out.count("- namespace: payments") == 1, "one merged entry:\n" + out)
        check("- exe: /usr/local/bin/vault-agent" in out and "- exe: /app/server" in out,
              "the union of both nodes' readers:\n" + out)
        check("learned on 2 nodes (node-a, node-b)" in out and "learning complete" in out,
              "the entry says where it was learned and that learning is over:\n" + out)
        check("/x" not in out, "refused uploads changed nothing:\n" + out)
        channel.close()
    finally:
        rc = collector.stop()
    check(rc == 0, "the collector exits 0 on SIGTERM (got %r)" % rc)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--collector", required=True)
    parser.add_argument("--ctl", required=True)
    parser.add_argument("--protoc", required=True)
    parser.add_argument("--proto-dir", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tw-profile-peer-") as tmp:
        run(args, tmp)
    print("%d passed, %d failed" % (peer.PASSED, len(peer.FAILURES)))
    return 1 if peer.FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
