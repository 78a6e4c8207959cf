#!/usr/bin/python3
"""End-to-end tests for the taint boundary (issue 14): which connections a
token read is joined to (TW010 token-used-apiserver, critical), and which
it must never be.

A read taints the reader, its descendants, and the shell that ran it (the
sibling rule for `T=$(cat token); curl`), but only inside the cgroup the
reader was in: not through `runc exec` into another pod, not out of a
container to the host, not into a later exec session, and not to a
newcomer that got an exited reader's pid.

Connections go through a network of the test's own
(simnode.ServiceNetwork): pod B's container joins its client namespace,
and host processes enter it with `ip netns exec`, which changes neither
their cgroup nor their pid namespace.

Runs in the hook mode TOKENWATCH_E2E_HOOK_MODE names (ctest runs it in
fanotify and in tracepoint mode).

Usage (root): python3 tests/e2e/test_taint.py
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
TOKEN = simnode.SA_MOUNT + "/token"
APISERVER = simnode.ServiceNetwork.APISERVER
WINDOW_S = 30  # the agent's correlation_window: longer than any scenario


def setUpModule():
    base.setUpModule()
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        raise unittest.SkipTest("iproute2 missing")


def argv0(p):
    argv = (p or {}).get("argv") or []
    return argv[0] if argv else ""


class TaintBoundary(base.AgentScenario):

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-taint-")
        cls.addClassCleanup(node.close)
        cls.net = node.add_service_network()
        cls.pod_a = node.add_pod("shop", "cart-7c9d8f6b5-a1b2c", "cart")
        node.add_container(cls.pod_a, "app")
        cls.pod_b = node.add_pod("billing", "invoices-5f6d7c8b9-x9y8z", "invoices")
        cls.b = node.add_container(cls.pod_b, "app", netns=cls.net.client)
        helper = node.compile_static(os.path.join(base.E2E_DIR, "use_helper.c"), "use_helper")
        cls.helper = helper
        cls.b.install(helper, "/opt/tw/use_helper")
        cls.b.install(helper, "/opt/tw/connect_to")
        cls.b.wait_entrypoint_reading()
        cls.tw = simnode.Tokenwatch(node, base.BIN_DIR)
        cls.tw.start_collector()
        cls.tw.start_agent(extra_args=["--apiserver", "%s:%d" % APISERVER],
                           config_text="correlation_window: %ds\n" % WINDOW_S)
        cls.net.wait_ready(cls.b)

    # helpers



    def settle_connects(self, before, at_least=1):
        """Waits until the agent has received `at_least` more connection
        records than `before` (the API server is a watched destination: every
        connection to it is reported), then a moment for their findings."""
        deadline = time.monotonic() + base.FINDING_TIMEOUT
        while self.connect_records() < before + at_least and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertGreaterEqual(self.connect_records(), before + at_least,
                                "the agent never received the connection record")
        time.sleep(2)

    def tw010_by(self, exe_suffix):
        return [f for f in self.tw.findings() if f.get("ruleId") == "TW010"
                and (argv0(f.get("process")).endswith(exe_suffix)
                     or (f.get("process") or {}).get("exe", "").endswith(exe_suffix))]

    def host_tool(self, source, name):
        return self.node.install_host_tool(source, "taint/" + name)

    def runc_exec_argv(self, container, argv):
        cmd = ["runc", "--root", self.node.runc_root, "exec", container.id] + list(argv)
        if self.node.v2_fixup_used:
            # As Container.exec does: a runc that does not join the v2 cgroup itself.
            procs = os.path.join(self.node.cgroup_v2_dir(container.cgroup_path), "cgroup.procs")
            return "echo 0 > %s && exec %s" % (procs, " ".join(cmd))
        return " ".join(cmd)

    def run_host(self, script, netns=False):
        argv = ["sh", "-c", script]
        if netns:
            argv = self.net.host_argv(argv)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, "host script failed: %s\n%s" % (script, r.stderr))
        return r

    # scenarios

    def test_10_host_read_then_runc_exec_into_another_pod_is_not_tw010(self):
        # A host harness: one child reads pod A's token under the kubelet
        # directory, the next one `runc exec`s a fresh process in pod B that
        # connects to the API server with pod B's own identity.
        cat = self.host_tool("/bin/cat", "cat.t10")
        before = self.connect_records()
        self.run_host("%s %s >/dev/null; sleep 1; %s" % (
            cat, self.pod_a.token_path,
            self.runc_exec_argv(self.b, ["/opt/tw/connect_to", "connect", *map(str, APISERVER)])))
        read = self.wait(lambda f: f.get("ruleId") == "TW003"
                         and argv0(f.get("process")) == cat, "the host read of pod A's token")
        self.assertEqual(((read.get("token") or {}).get("owner") or {}).get("uid"),
                         self.pod_a.uid)
        self.settle_connects(before)
        bad = self.tw010_by("/opt/tw/connect_to")
        self.assertEqual(bad, [], "TW010 for pod B's process, which never had the token:\n  " +
                         "\n  ".join(base.describe(f) for f in bad))
        # The harness's read finding was not raised to critical by that use.
        read = [f for f in self.tw.findings() if f.get("id") == read["id"]][0]
        self.assertEqual(read.get("severity"), "SEVERITY_HIGH", base.describe(read))

    def test_11_host_read_then_host_sibling_connect_is_tw010(self):
        # The same harness, its second child a host process: the sibling rule.
        cat = self.host_tool("/bin/cat", "cat.t11")
        connector = self.host_tool(self.helper, "conn.t11")
        self.run_host("%s %s >/dev/null; sleep 1; %s connect %s %d" % (
            cat, self.pod_a.token_path, connector, *APISERVER), netns=True)
        f = self.wait(lambda f: f.get("ruleId") == "TW010"
                      and argv0(f.get("process")) == connector,
                      "a host sibling of the reader connecting to the API server")
        self.assertEqual(f.get("severity"), "SEVERITY_CRITICAL")
        self.assertEqual(argv0(f.get("reader")), cat)
        self.assertEqual(((f.get("token") or {}).get("owner") or {}).get("uid"), self.pod_a.uid)

    def test_20_in_pod_shell_read_then_use_is_tw010_and_a_later_session_is_not(self):
        nc = self.b.install_applet("/opt/tw/busybox.t20")
        self.b.exec(["sh", "-c", "T=$(cat %s); %s nc -w 1 %s %d </dev/null; true" % (
            TOKEN, nc, *APISERVER)])
        f = self.wait(lambda f: f.get("ruleId") == "TW010"
                      and argv0(f.get("process")).endswith("busybox.t20"),
                      "sh -c 'T=$(cat token); nc apiserver' in pod B")
        self.assertEqual(((f.get("token") or {}).get("owner") or {}).get("uid"), self.pod_b.uid)
        # A separate kubectl-exec-style session in the same pod (same cgroup)
        # that connects without reading anything.
        before = self.connect_records()
        self.b.exec(["/opt/tw/use_helper", "connect", *map(str, APISERVER)])
        self.settle_connects(before)
        bad = self.tw010_by("/opt/tw/use_helper")
        self.assertEqual(bad, [], "TW010 for a later session that read nothing:\n  " +
                         "\n  ".join(base.describe(x) for x in bad))

    def test_30_a_reused_pid_does_not_inherit_the_readers_taint(self):
        # The reader execs from an inner shell, so its pid is known; the outer
        # shell (its parent) keeps the test process itself out of the taint.
        cat = self.host_tool("/bin/cat", "cat.t30")
        r = self.run_host("sh -c 'echo $$; exec %s %s >/dev/null'" % (cat, self.pod_a.token_path))
        reader_pid = int(r.stdout.split()[0])
        self.wait(lambda f: f.get("ruleId") == "TW003" and argv0(f.get("process")) == cat
                  and (f.get("process") or {}).get("pid") == reader_pid,
                  "the read by pid %d" % reader_pid)
        time.sleep(1)  # the agent has tainted (pid, start time) in the kernel by now
        newcomer = self.host_tool(self.helper, "reuse.t30")
        before = self.connect_records()
        r = subprocess.run(self.net.host_argv([newcomer, "reuse-pid", str(reader_pid),
                                               *map(str, APISERVER)]),
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, "no process got pid %d again (exit %d): %s" % (
            reader_pid, r.returncode, r.stderr))
        self.assertEqual(r.stdout.strip(), "reused %d" % reader_pid)
        self.settle_connects(before)
        bad = self.tw010_by("reuse.t30")
        self.assertEqual(bad, [], "TW010 for a newcomer that only shares the reader's pid:\n  " +
                         "\n  ".join(base.describe(x) for x in bad))

    def test_40_lineage_shows_each_image_once_and_marks_execs(self):
        # Every finding so far: no entry repeats the one before it (same pid
        # and start time) unless it is marked as an exec of it.
        findings = self.tw.findings()
        self.assertTrue(findings)
        for f in findings:
            chain = [f.get("process") or {}] + list(f.get("ancestors") or [])
            for newer, older in zip(chain, chain[1:]):
                same = (newer.get("pid") == older.get("pid")
                        and newer.get("startTime") == older.get("startTime"))
                self.assertEqual(same, bool(newer.get("fromExec")),
                                 "entry %s then %s in %s" % (
                                     newer.get("exe"), older.get("exe"), base.describe(f)))
                if newer.get("fromExec"):
                    self.assertEqual(newer.get("ppid"), older.get("ppid"),
                                     "an exec'd image names its real parent")

    def test_90_no_output_holds_the_token(self):
        outputs = {"findings file": simnode.read_text(self.tw.findings_path),
                   "agent stderr": self.tw.agent_stderr()}
        for secret in self.node.secrets_to_scan():
            for what, text in outputs.items():
                self.assertNotIn(secret, text, "a token leaked into the " + what)


if __name__ == "__main__":
    base.main()
