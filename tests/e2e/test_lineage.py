#!/usr/bin/python3
"""End-to-end tests for kernel-captured lineage and exec sessions (issue #3).

On the simulated node (deploy/demo/simnode.py) with the real agent and
collector:
- `runc exec CTR sh -c "sh -c 'cat token'"`, every process exiting at once,
  yields TW004 whose ancestors are sh, sh, then the runtime, each with argv;
- the same read by a child of the container's entrypoint (entrypoint -> sh ->
  cat) has the entrypoint among its ancestors and is not an exec session;
- a process started before the agent has a complete lineage (seeded from
  /proc).

Usage (root): python3 tests/e2e/test_lineage.py
Exit status 77 means skipped (ctest SKIP_RETURN_CODE).
"""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_token_reads as base  # noqa: E402  (prerequisites, helpers)

simnode = base.simnode
SA = simnode.SA_MOUNT

# The entrypoint of the second container: a shell that, when /tmp/go
# appears, has a child shell cat the token (what a compromised web server's
# command injection looks like).
ENTRYPOINT_SCRIPT = (
    "while true; do if [ -f /tmp/go ]; then rm -f /tmp/go; "
    "sh -c 'cat %s/token >/dev/null; true'; fi; sleep 0.1; done" % SA)


def setUpModule():
    base.setUpModule()


def name(p):
    """What a process calls itself: argv[0]'s basename (busybox applets share
    one binary, and a re-exec through /proc/self/exe leaves comm "exe")."""
    argv = p.get("argv") or []
    return os.path.basename(argv[0]) if argv else p.get("comm", "")


def chain(f):
    """[(name, exe, argv-joined, execSession)] for the actor then its ancestors."""
    out = []
    for p in [f.get("process") or {}] + list(f.get("ancestors") or []):
        out.append((name(p), p.get("exe", ""), " ".join(p.get("argv", [])),
                    bool(p.get("execSession", False))))
    return out


class LineageScenarios(base.AgentScenario):

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-lineage-")
        cls.addClassCleanup(node.close)
        cls.pod = node.add_pod("shop", "web-6b7f9d-abcde", "web")
        cls.app = node.add_container(cls.pod, "app")
        cls.shell_pod = node.add_pod("shop", "legacy-0", "legacy")
        cls.shell_app = node.add_container(cls.shell_pod, "legacy",
                                           entrypoint_argv=("/bin/sh", "-c", ENTRYPOINT_SCRIPT))
        cls.app.wait_entrypoint_reading()
        # A host process older than the agent: it waits for a trigger file,
        # then reads the token.
        cls.trigger = os.path.join(node.tmp, "go-host")
        cls.old = subprocess.Popen(
            ["/bin/sh", "-c", 'while [ ! -f "$1" ]; do sleep 0.1; done; cat "$2" >/dev/null',
             "tw-old-reader", cls.trigger, cls.pod.token_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node.cleanup.push("stop old reader", lambda: cls.old.kill())
        time.sleep(0.3)
        cls.tw = simnode.Tokenwatch(node, base.BIN_DIR)
        cls.tw.start_collector()
        cls.tw.start_agent()


    def test_exec_session_chain_is_complete_and_tw004(self):
        # The issue's own command. Shells exec their last command, so each sh
        # is an earlier program of the cat process: the kernel keeps those
        # images, and the chain still shows both shells.
        inner = "cat %s/token" % SA
        self.app.exec(["sh", "-c", "sh -c '%s'" % inner])
        f = self.wait(lambda f: f.get("ruleId") == "TW004"
                      and (f.get("token") or {}).get("owner", {}).get("uid") == self.pod.uid,
                      "runc exec sh -c \"sh -c 'cat token'\"")
        c = chain(f)
        self.assertEqual(c[0][0], "cat", c)
        # The binary really run, symlinks resolved, as the container sees it.
        self.assertEqual(c[0][1], "/bin/busybox", c)
        self.assertTrue(c[0][3], "actor not marked exec session: %s" % (c,))
        self.assertEqual(c[1][0], "sh", c)
        self.assertEqual(c[1][2], "sh -c " + inner, c)
        self.assertEqual(c[2][0], "sh", c)
        self.assertEqual(c[2][2], "sh -c sh -c '%s'" % inner, c)
        self.assertTrue(c[1][3] and c[2][3], c)
        # Then the runtime, outside the container.
        runtime = [x for x in c[3:6] if "runc" in x[0] or "runc" in x[1]]
        self.assertTrue(runtime, "no runc among the ancestors after sh, sh: %s" % (c,))
        self.assertFalse(runtime[0][3], c)
        self.assertEqual(f.get("severity"), "SEVERITY_HIGH")
        self.assertIn("T1609", f.get("mitre", []))
        # Every process in the chain carries an execId: the same for the
        # programs one process ran, different across processes.
        procs = [f["process"]] + f.get("ancestors", [])
        ids = {}
        for p in procs:
            self.assertTrue(p.get("execId", "").startswith("sim-node:"), p)
            ids.setdefault(p["execId"], set()).add(p.get("pid"))
        self.assertTrue(all(len(pids) == 1 for pids in ids.values()), ids)

    def test_child_of_entrypoint_is_not_an_exec_session(self):
        self.shell_app.exec(["touch", "/tmp/go"])
        f = self.wait(lambda f: (f.get("token") or {}).get("owner", {}).get("uid")
                      == self.shell_pod.uid and name(f.get("process") or {}) == "cat",
                      "entrypoint -> sh -> cat")
        self.assertEqual(f.get("ruleId"), "TW001", base.describe(f))
        c = chain(f)
        self.assertFalse(any(x[3] for x in c), c)
        self.assertEqual(c[1][0], "sh", c)
        self.assertTrue(any(ENTRYPOINT_SCRIPT in x[2] for x in c[2:]),
                        "the entrypoint is not among the ancestors: %s" % (c,))

    def test_process_older_than_the_agent_has_complete_lineage(self):
        with open(self.trigger, "w"):
            pass
        f = self.wait(lambda f: f.get("ruleId") == "TW003"
                      and (f.get("token") or {}).get("owner", {}).get("uid") == self.pod.uid,
                      "host cat started by a shell older than the agent")
        c = chain(f)
        self.assertEqual(c[0][0], "cat", c)
        self.assertIn("tw-old-reader", c[1][2], c)
        # And beyond it, this test's own interpreter.
        self.assertTrue(any("python" in x[1] or "python" in x[0] for x in c[2:]), c)


if __name__ == "__main__":
    base.main()
