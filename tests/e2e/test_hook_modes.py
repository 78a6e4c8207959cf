#!/usr/bin/python3
"""End-to-end tests for the hook modes and io_uring (issue #9).

On the simulated node (deploy/demo/simnode.py) with the real agent and
collector:
- with no --hook-mode the agent picks the strongest mode this kernel allows
  (fanotify on the development machines, which refuse LSM and fentry), logs
  it once and exports it as tokenwatch_hook_mode_info;
- an explicit mode the kernel refuses stops the agent with one line naming
  the reason (or, on a kernel that allows it, runs in that mode);
- in fanotify and in tracepoint mode, an io_uring open of the token inside a
  container (Debian's liburing, static helper tests/e2e/uring_read.c) raises
  TW005 token-read-io-uring, high, with the reader's lineage; so does an
  io_uring open into a direct descriptor (fixed-file slot).

Usage (root): python3 tests/e2e/test_hook_modes.py
Exit status 77 means skipped (ctest SKIP_RETURN_CODE).
"""

import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_token_reads as base  # noqa: E402  (prerequisites, helpers)

simnode = base.simnode
SA = simnode.SA_MOUNT


def setUpModule():
    base.setUpModule()
    if not os.path.exists("/usr/include/liburing.h"):
        reason = "liburing-dev not installed (the io_uring helper needs it)"
        if base.REQUIRE:
            raise RuntimeError("TOKENWATCH_REQUIRE_BPF=1 but: " + reason)
        raise unittest.SkipTest(reason)


class HookModeScenarios(base.AgentScenario):
    """One node and collector; an agent per mode, one after the other."""

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        # This suite chooses its modes itself.
        os.environ.pop("TOKENWATCH_E2E_HOOK_MODE", None)
        cls.node = node = simnode.SimNode(prefix="tokenwatch-hooks-")
        cls.addClassCleanup(node.close)
        cls.pod = node.add_pod("shop", "cart-5c8d7-q2w3e", "cart")
        cls.app = node.add_container(cls.pod, "app")
        cls.uring = os.path.join(node.tools_dir, "uring_read")
        simnode.host_run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", cls.uring,
                          os.path.join(base.E2E_DIR, "uring_read.c"), "-luring"], timeout=120)
        cls.app.wait_entrypoint_reading()
        cls.tw = simnode.Tokenwatch(node, base.BIN_DIR)
        cls.tw.start_collector()

    def run_agent(self, mode=None):
        args = ["--hook-mode", mode] if mode else []
        self.tw.start_agent(extra_args=args)
        self.addCleanup(self.stop_agent)

    def stop_agent(self):
        if self.tw.agent is not None:
            simnode.stop_process(self.tw.agent)
            self.tw.agent = None


    def uring_read(self, mode, direct):
        """io_uring open of the pod's token from inside the container, by a
        helper named for the scenario; returns its TW005 finding."""
        name = "ur.%s.%s" % (mode[:3], "dir" if direct else "fd")
        helper = self.app.install(self.uring, "/opt/tw/" + name)
        argv = [helper] + (["--direct"] if direct else []) + [SA + "/token"]
        res = self.app.exec(["sh", "-c", " ".join(argv) + " >/dev/null"], check=False)
        self.assertEqual(res.returncode, 0, res.stderr)
        return self.wait(lambda f: base.mentions(f, name) and f.get("ruleId") == "TW005",
                         "io_uring open by %s" % name), name

    def assert_io_uring_finding(self, f, mode, name):
        self.assertEqual(f.get("ruleName"), "token-read-io-uring", base.describe(f))
        self.assertEqual(f.get("severity"), "SEVERITY_HIGH", base.describe(f))
        self.assertEqual(f.get("hookMode"), mode, base.describe(f))
        self.assertEqual((f.get("access") or {}).get("path"), "ACCESS_PATH_IO_URING",
                         base.describe(f))
        owner = (f.get("token") or {}).get("owner") or {}
        self.assertEqual(owner.get("uid"), self.pod.uid, base.describe(f))
        p = f.get("process") or {}
        self.assertTrue(p.get("exe", "").endswith("/" + name), base.describe(f))
        self.assertEqual((p.get("pod") or {}).get("uid"), self.pod.uid, base.describe(f))
        self.assertEqual(p.get("containerId"), self.app.id, base.describe(f))
        # The lineage: the shell that ran it (an earlier image of the same
        # process, or its parent), then the runtime outside the container.
        ancestors = f.get("ancestors") or []
        self.assertTrue(ancestors, "no lineage: " + base.describe(f))
        names = [os.path.basename(a.get("exe", "")) + " " + " ".join(a.get("argv", []))
                 for a in ancestors]
        self.assertTrue(any("sh" in n for n in names), names)
        # One open, one finding: fanotify's event folds into the io_uring record.
        same = [x for x in self.tw.findings() if base.mentions(x, name)]
        self.assertEqual(len(same), 1, "\n".join(base.describe(x) for x in same))

    def check_mode(self, mode):
        for direct in (False, True):
            with self.subTest(mode=mode, direct=direct):
                f, name = self.uring_read(mode, direct)
                time.sleep(1)  # let a duplicate arrive, if any
                self.assert_io_uring_finding(f, mode, name)

    def test_auto_picks_fanotify_here_and_says_so(self):
        self.run_agent()
        log = self.tw.agent_stderr()
        m = re.findall(r"hook mode (\w+) \(", log)
        self.assertEqual(len(m), 1, log[-2000:])
        metrics = self.tw.metrics()
        mode = m[0]
        self.assertIn('tokenwatch_hook_mode_info{mode="%s"} 1' % mode, metrics)
        # This kernel (and CI's) refuses LSM and fentry programs; with root,
        # fanotify is always there.
        refused = re.findall(r"hook mode passed over, (\w+):", log)
        self.assertEqual(refused, ["lsm", "fentry"][:len(refused)], log[-2000:])
        self.assertIn(mode, ("lsm", "fentry", "fanotify"))
        if refused == ["lsm", "fentry"]:
            self.assertEqual(mode, "fanotify")

    def test_explicit_mode_the_kernel_refuses_fails_with_the_reason(self):
        for mode in ("lsm", "fentry"):
            argv = self.tw.agent_argv(findings_out="-") + ["--hook-mode", mode]
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=60, text=True)
            if proc.returncode == 0:
                continue  # cannot happen: the agent runs until stopped
            lines = [x for x in proc.stderr.splitlines() if x.strip()]
            self.assertTrue(lines, "agent exited %d silently" % proc.returncode)
            self.assertIn("--hook-mode %s:" % mode, lines[-1])

    def test_fanotify_queue_overflow_raises_tw090(self):
        # A tiny event queue for the agent's fanotify group (the limit is
        # read when the group is made), then opens while the agent is stopped.
        knob = "/proc/sys/fs/fanotify/max_queued_events"
        with open(knob) as f:
            saved = f.read().strip()
        with open(knob, "w") as f:
            f.write("4")
        try:
            self.run_agent("fanotify")
        finally:
            with open(knob, "w") as f:
                f.write(saved)
        os.kill(self.tw.agent.pid, 19)  # SIGSTOP
        try:
            for _ in range(12):  # distinct processes: events of one pid merge
                simnode.host_run(["/bin/sh", "-c", 'cat "$1" >/dev/null', "sh",
                                  self.pod.token_path])
        finally:
            os.kill(self.tw.agent.pid, 18)  # SIGCONT
        f = self.wait(lambda f: f.get("ruleId") == "TW090", "fanotify queue overflow")
        self.assertEqual(f.get("ruleName"), "sensor-events-lost", base.describe(f))
        self.assertEqual(f.get("severity"), "SEVERITY_HIGH", base.describe(f))
        self.assertIn("fanotify", f.get("summary", ""), base.describe(f))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(r'tokenwatch_kernel_drops_total\{reason="fanotify_overflow"\} (\S+)',
                          self.tw.metrics())
            if m and float(m.group(1)) >= 1:
                break
            time.sleep(0.5)
        else:
            self.fail("fanotify_overflow not counted in /metrics")

    def test_fanotify_io_uring_opens_raise_tw005(self):
        self.run_agent("fanotify")
        self.check_mode("fanotify")

    def test_tracepoint_io_uring_opens_raise_tw005(self):
        self.run_agent("tracepoint")
        self.check_mode("tracepoint")


if __name__ == "__main__":
    base.main()
