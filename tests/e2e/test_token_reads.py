#!/usr/bin/python3
"""End-to-end tests for token-read detection (issue #2's acceptance list).

A simulated node (deploy/demo/simnode.py: kubelet-style tmpfs volumes, real
runc containers in kubepods cgroups), the real tokenwatch-agent and
tokenwatch-collector; scenarios drive real reads and assert on the findings
that reach the collector, queried with tokenwatchctl.

Findings fold by (rule, pod, exe, token), so every scenario reads with its own
copy of the reading binary, with its own file name (the agent may know a
short-lived process only by its name): in the container busybox copied to
/opt/tw/busybox.<tag> and run as `busybox.<tag> cat FILE` (busybox takes the
applet from argv[1] when its name starts with "busybox"), on the host
<tmp>/tools/tw/<name>. Names stay within the 15 characters of a task's comm.
Each scenario then looks for the finding whose process.exe or argv carries
that name.

Environment: TOKENWATCH_BIN_DIR (the build's bin dir; default <source>/build/bin),
TOKENWATCH_AGENT / TOKENWATCH_COLLECTOR / TOKENWATCHCTL (override one binary),
TOKENWATCH_SOURCE_DIR, TOKENWATCH_REQUIRE_BPF=1 (fail instead of skipping).

Usage (root): python3 tests/e2e/test_token_reads.py [TokenReadScenarios|AgentStartupErrors]
Exit status 77 means skipped (ctest SKIP_RETURN_CODE).
"""

import ctypes
import os
import platform
import shutil
import subprocess
import sys
import time
import unittest

SOURCE_DIR = os.environ.get("TOKENWATCH_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "deploy", "demo"))
import simnode  # noqa: E402

BIN_DIR = os.environ.get("TOKENWATCH_BIN_DIR") or os.path.join(SOURCE_DIR, "build", "bin")
E2E_DIR = os.path.join(SOURCE_DIR, "tests", "e2e")
REQUIRE = os.environ.get("TOKENWATCH_REQUIRE_BPF") == "1"
# How long a scenario waits for its finding to reach the collector.
FINDING_TIMEOUT = int(os.environ.get("TOKENWATCH_E2E_FINDING_TIMEOUT", "30"))
SA = simnode.SA_MOUNT
# The agent's dedup_window in TokenReadScenarios (below FINDING_TIMEOUT).
DEDUP_WINDOW_S = 10


# ---------------------------------------------------------------------------
# Prerequisites


def _bpf_available():
    """Whether this process may create a BPF map (the least any probe needs)."""
    nr = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
    if nr is None:
        return False, "unknown syscall number for bpf on " + platform.machine()
    libc = ctypes.CDLL(None, use_errno=True)
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY
    fd = libc.syscall(nr, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return False, "bpf(BPF_MAP_CREATE) failed: %s" % os.strerror(ctypes.get_errno())
    os.close(fd)
    return True, ""


def missing_prerequisites():
    reasons = []
    if os.geteuid() != 0:
        reasons.append("not root")
    if shutil.which("runc") is None:
        reasons.append("runc not installed")
    if shutil.which("gcc") is None:
        reasons.append("gcc not installed")
    if os.geteuid() == 0:
        ok, why = _bpf_available()
        if not ok:
            reasons.append("BPF unavailable: " + why)
    for name, env in (("tokenwatch-agent", "TOKENWATCH_AGENT"),
                      ("tokenwatch-collector", "TOKENWATCH_COLLECTOR"),
                      ("tokenwatchctl", "TOKENWATCHCTL")):
        if simnode.find_binary(BIN_DIR, name, env) is None:
            reasons.append("%s not found (TOKENWATCH_BIN_DIR=%s)" % (name, BIN_DIR))
    return reasons


def setUpModule():
    reasons = missing_prerequisites()
    if reasons:
        if REQUIRE:
            raise RuntimeError("TOKENWATCH_REQUIRE_BPF=1 but: " + "; ".join(reasons))
        raise unittest.SkipTest("; ".join(reasons))


def main():
    """Every e2e file's entry point: exits 77 (ctest's SKIP_RETURN_CODE) when
    this machine lacks a prerequisite, or 1 naming it when
    TOKENWATCH_REQUIRE_BPF=1 (CI); otherwise runs the calling script's tests
    (a class name argument selects one class). unittest alone would turn
    setUpModule's SkipTest into exit status 0, which ctest shows as a pass."""
    reasons = missing_prerequisites()
    if reasons:
        print("%s: %s" % ("FAIL (TOKENWATCH_REQUIRE_BPF=1)" if REQUIRE else "SKIP",
                          "; ".join(reasons)), flush=True)
        sys.exit(1 if REQUIRE else 77)
    unittest.main(module="__main__", verbosity=2)


# ---------------------------------------------------------------------------
# Finding helpers


def _process(f):
    return f.get("process") or {}


def mentions(f, marker):
    """Whether finding f's actor is the scenario's reader (marker in exe or argv)."""
    p = _process(f)
    return marker in p.get("exe", "") or any(marker in a for a in p.get("argv", []))


def describe(f):
    p = _process(f)
    return "%s %s exe=%s argv=%s pod=%s count=%s" % (
        f.get("ruleId"), f.get("id"), p.get("exe"), p.get("argv"),
        (p.get("pod") or {}).get("uid"), f.get("count", "1"))


def count_of(f):
    # uint64 is a JSON string in the proto3 mapping; absent means the default.
    return int(f.get("count", 0) or 0)


class AgentScenario(unittest.TestCase):
    """A scenario class whose setUpClass sets `tw` (simnode.Tokenwatch): waits
    for findings and reads the agent's counters."""

    def wait(self, predicate, what, timeout=FINDING_TIMEOUT):
        """The first finding in the collector that `predicate` accepts; fails
        naming `what`, every finding stored and the agent's log tail."""
        f = self.tw.wait_for_finding(predicate, timeout=timeout)
        if f is None:
            self.fail("no finding for %s.\nfindings:\n  %s\nagent stderr (tail):\n%s" % (
                what, "\n  ".join(describe(x) for x in self.tw.findings()) or "(none)",
                self.tw.agent_stderr()[-3000:]))
        return f

    def connect_records(self):
        """Connection records the agent has received from the kernel."""
        return self.tw.metric_value("tokenwatch_kernel_records_total", {"type": "connect"}) or 0.0


class TokenReadScenarios(unittest.TestCase):
    """One node, one agent, one collector for all scenarios; tests run in name
    order (the rotation and leak checks come last)."""

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-e2e-")
        cls.addClassCleanup(node.close)
        cls.victim = node.add_pod("payments", "payments-api-7d9c8", "payments-api")
        cls.legacy = cls.victim.add_legacy_secret_volume("payments-api-token-x7k2p")
        cls.app = node.add_container(cls.victim, "api",
                                     extra_mounts=[(cls.legacy.path, "/var/run/secrets/legacy")])
        cls.attacker_pod = node.add_pod("tools", "debug-shell-5f6b4", "default")
        cls.attacker = node.add_attacker_container(cls.attacker_pod)
        cls.openat2_read = node.compile_static(os.path.join(E2E_DIR, "openat2_read.c"),
                                               "openat2_read")
        cls.handle_read = node.compile_static(os.path.join(E2E_DIR, "handle_read.c"),
                                              "handle_read")
        cls.app.wait_entrypoint_reading()
        cls.tw = simnode.Tokenwatch(node, BIN_DIR)
        cls.tw.start_collector()
        # A folded finding is sent again when its dedup window closes: a
        # short window brings test_40's final count within its wait.
        cls.tw.start_agent(config_text="dedup_window: %ds\n" % DEDUP_WINDOW_S)
        cls.entrypoint_reads_at_start = cls.app.controller_reads()[0]

    # helpers

    def wait_finding(self, marker, rule=None, timeout=FINDING_TIMEOUT):
        f = self.tw.wait_for_finding(
            lambda f: mentions(f, marker) and (rule is None or f.get("ruleId") in rule),
            timeout=timeout)
        if f is None:
            self.fail("no finding%s for reader %s within %ds.\nfindings:\n  %s\n"
                      "agent stderr (tail):\n%s" % (
                          " " + "/".join(rule) if rule else "", marker, timeout,
                          "\n  ".join(describe(x) for x in self.tw.findings()) or "(none)",
                          self.tw.agent_stderr()[-3000:]))
        return f

    def matching(self, marker):
        return [f for f in self.tw.findings() if mentions(f, marker)]

    def assert_owner_is(self, f, pod, legacy=False):
        token = f.get("token") or {}
        owner = token.get("owner") or {}
        self.assertEqual(owner.get("uid"), pod.uid, describe(f))
        self.assertEqual(owner.get("namespace"), pod.namespace, describe(f))
        if not legacy:  # legacy tokens carry no pod name
            self.assertEqual(owner.get("name"), pod.name, describe(f))
        self.assertEqual(token.get("serviceAccount"), pod.service_account, describe(f))

    def assert_reader_in(self, f, pod, container):
        p = _process(f)
        self.assertEqual((p.get("pod") or {}).get("uid"), pod.uid, describe(f))
        self.assertEqual(p.get("containerId"), container.id, describe(f))
        self.assertGreater(p.get("pid", 0), 0, describe(f))

    def in_pod_read(self, tag, script, applet="cat"):
        """Runs script in the victim container with $R = applet run from a private
        busybox copy named busybox.<tag>; returns the (one) finding it raises."""
        marker = "busybox." + tag
        self.assertLessEqual(len(marker), 15)
        reader = self.app.install_applet("/opt/tw/" + marker)
        self.app.exec(["sh", "-c", script.replace("$R", "%s %s" % (reader, applet))])
        # TW004 (exec session) may be raised beside or instead of TW001: the
        # reader came in through runc exec. Either names the owner.
        f = self.wait_finding(marker, rule=("TW001", "TW004"))
        time.sleep(1)  # let any duplicate arrive before counting
        same = self.matching(marker)
        for rule in {x.get("ruleId") for x in same}:
            dups = [x for x in same if x.get("ruleId") == rule]
            self.assertEqual(len(dups), 1, "one read, several %s findings:\n  %s" % (
                rule, "\n  ".join(describe(x) for x in dups)))
        self.assertEqual({x.get("ruleId") for x in same} - {"TW001", "TW004"}, set(),
                         "unexpected rules: " + "; ".join(describe(x) for x in same))
        return f

    def assert_in_pod_finding(self, f, legacy=False):
        self.assert_owner_is(f, self.victim, legacy=legacy)
        self.assert_reader_in(f, self.victim, self.app)
        self.assertNotEqual(f.get("severity", "SEVERITY_UNSPECIFIED"), "SEVERITY_UNSPECIFIED")

    # in-pod reads, one per spelling of the path or way of opening

    def test_01_canonical_path(self):
        f = self.in_pod_read("canon", "$R %s/token >/dev/null" % SA)
        self.assert_in_pod_finding(f)
        self.assertIn("%s/token" % SA, _process(f).get("argv", []))

    def test_02_run_path(self):
        path = simnode.RUN_SA_MOUNT + "/token"
        f = self.in_pod_read("runpath", "$R %s >/dev/null" % path)
        self.assert_in_pod_finding(f)

    def test_03_data_symlink(self):
        f = self.in_pod_read("datadir", "$R %s/..data/token >/dev/null" % SA)
        self.assert_in_pod_finding(f)

    def test_04_relative_path_after_cd(self):
        f = self.in_pod_read("relpath", "cd %s && $R token >/dev/null" % SA)
        self.assert_in_pod_finding(f)

    def test_05_proc_self_root(self):
        f = self.in_pod_read("procrt", "$R /proc/self/root%s/token >/dev/null" % SA)
        self.assert_in_pod_finding(f)

    def test_06_symlink_made_in_tmp(self):
        f = self.in_pod_read("tmplink",
                             "ln -sf %s/token /tmp/notes.txt && $R /tmp/notes.txt >/dev/null" % SA)
        self.assert_in_pod_finding(f)

    def test_07_openat2(self):
        self.app.install(self.openat2_read, "/opt/tw/openat2_read")
        self.app.exec(["/opt/tw/openat2_read", SA + "/token"])
        f = self.wait_finding("openat2_read", rule=("TW001", "TW004"))
        self.assert_in_pod_finding(f)
        if f.get("hookMode") == "tracepoint":
            self.assertEqual((f.get("access") or {}).get("syscall"), "openat2", describe(f))

    def test_08_find_xargs_grep(self):
        f = self.in_pod_read(
            "findgrp",
            "find /var/run/secrets/kubernetes.io/ -name token | xargs $R -c . >/dev/null",
            applet="grep")
        self.assert_in_pod_finding(f)

    def test_09_legacy_secret_token(self):
        f = self.in_pod_read("legacy", "$R /var/run/secrets/legacy/token >/dev/null")
        self.assert_in_pod_finding(f, legacy=True)
        self.assertEqual((f.get("token") or {}).get("kind"), "TOKEN_KIND_SECRET", describe(f))

    # host and cross-pod reads

    def assert_host_finding(self, f):
        self.assertEqual(f.get("ruleId"), "TW003", describe(f))
        self.assert_owner_is(f, self.victim)
        p = _process(f)
        self.assertFalse((p.get("pod") or {}).get("uid"), "host reader given a pod: " + describe(f))
        self.assertFalse(p.get("containerId"), describe(f))

    def test_20_host_read_under_kubelet_dir(self):
        cat = self.node.install_host_tool("/bin/cat", "tw/cat.hostread")
        simnode.host_run([cat, self.victim.token_path])
        self.assert_host_finding(self.wait_finding("cat.hostread", rule=("TW003",)))

    def test_21_host_open_by_handle_at(self):
        reader = self.node.install_host_tool(self.handle_read, "tw/handle_read")
        simnode.host_run([reader, self.victim.token_path])
        f = self.wait_finding("handle_read", rule=("TW003",))
        self.assert_host_finding(f)
        if f.get("hookMode") == "tracepoint":
            self.assertEqual((f.get("access") or {}).get("syscall"), "open_by_handle_at",
                             describe(f))

    def test_30_other_pod_through_host_path(self):
        reader = self.attacker.install_applet("/opt/tw/busybox.xpod")
        self.attacker.exec(["sh", "-c", "%s cat %s >/dev/null" % (
            reader, self.node.host_path_in_attacker(self.victim))])
        f = self.wait_finding("busybox.xpod", rule=("TW002",))
        self.assert_owner_is(f, self.victim)
        self.assert_reader_in(f, self.attacker_pod, self.attacker)
        reader_pod = _process(f).get("pod") or {}
        self.assertEqual(reader_pod.get("namespace"), self.attacker_pod.namespace, describe(f))
        self.assertEqual(reader_pod.get("name"), self.attacker_pod.name, describe(f))

    # folding, inventory, rotation

    def test_40_repeated_reads_fold_into_one_finding(self):
        reader = self.app.install_applet("/opt/tw/busybox.fold")
        for _ in range(3):
            self.app.exec(["sh", "-c", "%s cat %s/token >/dev/null" % (reader, SA)])
        # The count grows at once in the agent and reaches the collector
        # when the fold's window closes.
        deadline = time.monotonic() + FINDING_TIMEOUT
        while True:
            found = [f for f in self.matching("busybox.fold") if f.get("ruleId") == "TW001"] or \
                self.matching("busybox.fold")
            if found and max(count_of(f) for f in found) >= 3:
                break
            if time.monotonic() > deadline:
                self.fail("3 reads did not fold to count 3 within %ds: %s" % (
                    FINDING_TIMEOUT, "; ".join(describe(f) for f in found) or "no finding"))
            time.sleep(0.5)
        by_rule = {}
        for f in found:
            by_rule.setdefault(f.get("ruleId"), []).append(f)
        for rule, fs in by_rule.items():
            self.assertEqual(len(fs), 1, "%s not folded: %s" % (
                rule, "; ".join(describe(f) for f in fs)))

    def wait_metric(self, name, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.tw.metric_value(name)
            if value is not None and predicate(value):
                return value
            time.sleep(0.25)
        return value

    def test_45_deleted_pod_tokens_leave_the_map(self):
        metric = "tokenwatch_tokens_watched"
        before = self.tw.metric_value(metric)
        self.assertIsNotNone(before, "%s missing from /metrics" % metric)
        self.assertGreaterEqual(before, 3, "3 tokens on the node, %s=%s" % (metric, before))
        doomed = self.node.add_pod("batch", "nightly-report-29113", "reporter")
        self.node.add_container(doomed, "job")
        grown = self.wait_metric(metric, lambda v: v >= before + 1)
        self.assertGreaterEqual(grown, before + 1, "new pod's token not watched")
        self.node.delete_pod(doomed)
        after = self.wait_metric(metric, lambda v: v <= before)
        self.assertLessEqual(after, before, "deleted pod's token still watched")

    def test_50_reads_after_rotation_are_reported(self):
        old_inode = self.victim.token_inode()
        self.victim.rotate()
        new_inode = self.victim.token_inode()
        self.assertNotEqual(old_inode, new_inode)
        # The kubelet would not rotate again for ~48 minutes; a second is
        # plenty for inotify to see the swap.
        time.sleep(1)
        f = self.in_pod_read("rotated", "$R %s/token >/dev/null" % SA)
        self.assert_in_pod_finding(f)
        inode = (f.get("token") or {}).get("inode")
        if inode is not None:
            self.assertEqual(int(inode), new_inode, describe(f))
        # The entrypoint keeps reading the new token without a failure.
        ok, failed = self.app.controller_reads()
        time.sleep(1)
        self.assertGreater(self.app.controller_reads()[0], ok)
        self.assertEqual(failed, 0)

    # what must not happen

    def test_90_entrypoint_reads_raise_nothing(self):
        ok, failed = self.app.controller_reads()
        self.assertGreater(ok - self.entrypoint_reads_at_start, 20,
                           "the entrypoint barely read its token; the test proves nothing")
        self.assertEqual(failed, 0)
        noisy = [f for f in self.tw.findings()
                 if _process(f).get("exe", "").endswith("/app/controller")]
        self.assertEqual(noisy, [], "entrypoint raised: " + "; ".join(map(describe, noisy)))
        local = self.tw.local_findings()
        self.assertTrue(local, "no findings in the agent's --findings-out file")
        noisy = [f for f in local if _process(f).get("exe", "").endswith("/app/controller")]
        self.assertEqual(noisy, [], "entrypoint raised: " + "; ".join(map(describe, noisy)))

    def test_99_no_output_contains_a_token(self):
        # Exercise every tokenwatchctl view before collecting the outputs.
        self.tw.ctl("findings")
        for f in self.tw.findings():
            self.tw.ctl("finding", f["id"])
        time.sleep(1)  # let the collector flush
        outputs = {"/metrics": self.tw.metrics().encode()}
        for i, text in enumerate(self.tw.ctl_outputs):
            outputs["tokenwatchctl output #%d" % i] = text.encode()
        paths = [self.tw.findings_path, self.tw.agent_log, self.tw.collector_log]
        for d in (self.tw.state_dir,):
            for root, _, files in os.walk(d):
                paths += [os.path.join(root, n) for n in files]
        paths += [p for p in (self.tw.db_path, self.tw.db_path + "-wal",
                              self.tw.db_path + "-journal") if os.path.exists(p)]
        self.assertTrue(os.path.exists(self.tw.db_path), "collector db not created")
        for p in paths:
            with open(p, "rb") as f:
                outputs[p] = f.read()
        secrets = self.node.secrets_to_scan()
        self.assertGreaterEqual(len(secrets), 8)
        leaks = ["%s holds a token%s" % (where, " signature" if i % 2 else "")
                 for where, data in outputs.items()
                 for i, s in enumerate(secrets) if s.encode() in data]
        self.assertEqual(leaks, [])


class AgentStartupErrors(unittest.TestCase):
    """The agent refuses to start on a kernel or privilege set it cannot use,
    with one line naming what is missing."""

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-e2e-start-")
        cls.addClassCleanup(node.close)
        cls.tw = simnode.Tokenwatch(node, BIN_DIR)

    def run_agent(self, argv, env=None):
        env = dict(os.environ, **(env or {}))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.addCleanup(simnode.stop_process, proc)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            simnode.stop_process(proc)
            self.fail("agent kept running for 30 s instead of exiting")
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def assert_one_clear_line(self, rc, err, words):
        self.assertGreater(rc, 0, "agent exit status %d; stderr:\n%s" % (rc, err))
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertTrue(lines, "agent exited %d without a word" % rc)
        last = lines[-1].lower()
        self.assertTrue(any(w in last for w in words),
                        "last stderr line does not name %s: %r" % ("/".join(words), lines[-1]))

    def test_without_btf(self):
        rc, _, err = self.run_agent(self.tw.agent_argv(findings_out="-"),
                                    env={"TOKENWATCH_BTF_PATH": "/nonexistent"})
        self.assert_one_clear_line(rc, err, ["btf"])

    def test_without_bpf_permission(self):
        # Everything else it needs is open to the unprivileged user (its own
        # copy of the binary, an empty kubelet root, a state dir it owns), so
        # the only thing missing is the BPF permission.
        state = os.path.join(self.node.tmp, "nobody-state")
        os.mkdir(state)
        os.chown(state, 65534, 65534)
        agent = self.node.install_host_tool(self.tw.agent_bin, "nobody/tokenwatch-agent")
        argv = self.tw.agent_argv(agent_bin=agent, findings_out="-", state_dir=state)
        rc, _, err = self.run_agent(["setpriv", "--reuid=65534", "--regid=65534",
                                     "--clear-groups"] + argv)
        self.assert_one_clear_line(rc, err, ["bpf", "cap_"])
        self.assertTrue(any(w in err.lower() for w in ("permi", "privilege", "cap_", "root")),
                        "does not say it lacks permission: %s" % err.strip()[-500:])


if __name__ == "__main__":
    main()
