#!/usr/bin/python3
"""End-to-end test for noise (issue 5): 2,000 reads of the token by 2,000
short-lived `cat` processes in one exec session give at most a handful of
findings, whose counts add up to every read.

A simulated node (deploy/demo/simnode.py) with one pod whose entrypoint reads
its own token (expected, quiet), the real agent and the real collector. One
`runc exec` runs a shell loop of 2,000 cats of the token: each cat is a
process of its own, so the kernel reports every open, and the agent folds
them by (rule, pod, exe, token) into one TW004 token-read-exec-session
finding. The agent's dedup_window is short so the fold's final count, sent
again when the window closes, reaches the collector within the test.

Usage (root): python3 tests/e2e/test_noise.py
Exit status 77 means skipped. Environment as for test_token_reads.py.
"""

import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_token_reads as base  # noqa: E402
from test_token_reads import simnode  # noqa: E402

READS = 2000
# Long enough for the loop to end inside one window on a loaded machine,
# short enough for the window-end re-send to come soon after.
WINDOW_S = 20
# "At most a handful of findings."
MAX_FINDINGS = 5
# How long the loop may take (2,000 fork+exec of busybox: seconds here).
LOOP_TIMEOUT_S = 180


def setUpModule():
    base.setUpModule()


class ExecSessionCatLoop(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-noise-")
        cls.addClassCleanup(node.close)
        cls.pod = node.add_pod("shop", "web-6c9f8d7b5-k2x4p", "web")
        cls.app = node.add_container(cls.pod, "web")
        cls.app.wait_entrypoint_reading()
        cls.tw = simnode.Tokenwatch(node, base.BIN_DIR)
        cls.tw.start_collector()
        cls.tw.start_agent(config_text="dedup_window: %ds\n" % WINDOW_S)

    def describe_all(self, findings):
        return "\n  ".join(base.describe(f) for f in findings) or "(none)"

    def test_2000_cats_in_one_exec_session_are_a_handful_of_findings(self):
        # The entrypoint reads its own token: nothing raised before the loop.
        time.sleep(1)
        before = {f["id"] for f in self.tw.findings()}
        self.assertEqual(before, set(), "findings before the loop:\n  " +
                         self.describe_all(self.tw.findings()))

        script = ("i=0; while [ $i -lt %d ]; do cat %s/token >/dev/null || exit 1; "
                  "i=$((i+1)); done" % (READS, simnode.SA_MOUNT))
        started = time.monotonic()
        self.app.exec(["sh", "-c", script], timeout=LOOP_TIMEOUT_S)
        loop_s = time.monotonic() - started
        print("\n%d cats in %.1fs" % (READS, loop_s), file=sys.stderr, flush=True)

        # The first finding is out at once; the final count when its window
        # closes (WINDOW_S after the first read).
        deadline = time.monotonic() + WINDOW_S + base.FINDING_TIMEOUT
        while True:
            found = self.tw.findings()
            exec_session = [f for f in found if f.get("ruleId") == "TW004"]
            total = sum(base.count_of(f) for f in exec_session)
            if total >= READS or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(1)  # let anything extra arrive before counting
        found = self.tw.findings()
        exec_session = [f for f in found if f.get("ruleId") == "TW004"]
        listing = self.describe_all(found)
        print("findings:\n  " + listing, file=sys.stderr, flush=True)

        self.assertGreaterEqual(len(exec_session), 1, "no TW004 finding:\n  " + listing +
                                "\nagent stderr (tail):\n" + self.tw.agent_stderr()[-3000:])
        self.assertLessEqual(len(found), MAX_FINDINGS,
                             "%d reads gave %d findings:\n  %s" % (READS, len(found), listing))
        self.assertEqual(sum(base.count_of(f) for f in exec_session), READS,
                         "counts of the TW004 findings:\n  " + listing)
        for f in exec_session:
            p = base._process(f)
            self.assertTrue(p.get("execSession"), base.describe(f))
            self.assertEqual((p.get("pod") or {}).get("uid"), self.pod.uid, base.describe(f))
            self.assertEqual(((f.get("token") or {}).get("owner") or {}).get("uid"),
                             self.pod.uid, base.describe(f))
            self.assertEqual(f.get("severity"), "SEVERITY_HIGH", base.describe(f))
            self.assertIn("reader came through an exec session", f.get("severityReasons", []),
                          base.describe(f))
            shown = self.tw.ctl("finding", f["id"])
            self.assertIn("Because:", shown)
            self.assertIn("exec session", shown)

        # Each finding went out at most twice: when raised, and once more with
        # its final count when its window closed.
        lines = self.tw.local_findings()
        for f in exec_session:
            sent = [x for x in lines if x.get("id") == f["id"]]
            self.assertLessEqual(len(sent), 2, "%s sent %d times" % (f["id"], len(sent)))
        folded = self.tw.metric_value("tokenwatch_findings_folded_total")
        self.assertGreaterEqual(folded or 0, READS - len(exec_session), "folded metric")

        # No token, nor its signature, in anything the agent or collector wrote.
        paths = [self.tw.findings_path, self.tw.agent_log, self.tw.collector_log]
        paths += [p for p in (self.tw.db_path, self.tw.db_path + "-wal") if os.path.exists(p)]
        data = {}
        for p in paths:
            with open(p, "rb") as f:
                data[p] = f.read()
        for i, text in enumerate(self.tw.ctl_outputs):
            data["tokenwatchctl output #%d" % i] = text.encode()
        leaks = ["%s holds a token or its signature" % where
                 for where, blob in data.items()
                 for s in self.node.secrets_to_scan() if s.encode() in blob]
        self.assertEqual(leaks, [])


if __name__ == "__main__":
    base.main()
