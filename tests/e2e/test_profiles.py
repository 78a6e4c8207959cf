#!/usr/bin/python3
"""End-to-end test for central profile export (issue 5): `tokenwatchctl profile export`.

A simulated node (deploy/demo/simnode.py) with one pod whose entrypoint is
test_policy.py's launcher (it rereads the token every 100 ms and runs reader
binaries on request, so readers descend from the entrypoint and are judged by
TW001's policy and baseline logic). The real collector and the real agent
with --collector and learning on: a reader learned during the window reaches
the collector in the agent's profile upload, and `tokenwatchctl profile
export` prints it as policy YAML. That YAML, as the whole policy of a second
agent that learns nothing, starts the agent and makes the learned reader
expected, while a reader it does not name still raises TW001.

Usage (root): python3 tests/e2e/test_profiles.py [ProfileExport]
Exit status 77 means skipped. Environment as for test_token_reads.py.
"""

import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_policy as policy_e2e  # noqa: E402
import test_token_reads as base  # noqa: E402
from test_token_reads import simnode  # noqa: E402

# The agent uploads at start and then at most once a minute: the learned reader arrives
# within a minute or so of being learned.
UPLOAD_TIMEOUT = 150
LEARNED = "/opt/learned/reader"


def setUpModule():
    base.setUpModule()


class ProfileExport(policy_e2e.LauncherReaders, unittest.TestCase):
    """One node, one collector; tests run in name order and build on each other."""

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-profiles-")
        cls.addClassCleanup(node.close)
        bindir = node.static_tools({"launcher": policy_e2e.LAUNCHER_C,
                                    "reader": policy_e2e.READER_C})
        cls.reader_bin = os.path.join(bindir, "reader")
        # Deployment-style pod name: the workload is "api".
        cls.pod = node.add_pod("payments", "api-7d9c8b6f4-zq2wn", "api")
        cls.app = node.add_container(cls.pod, "api", entrypoint_argv=("/twbin/launcher",),
                                     extra_mounts=[(bindir, "/twbin")])
        cls.tw = simnode.Tokenwatch(node, base.BIN_DIR)
        cls.tw.start_collector()
        # A window that stays open for the whole test: everything read is learned.
        cls.config = os.path.join(node.tmp, "learn.yaml")
        with open(cls.config, "w") as f:
            f.write("policy:\n  learning:\n    window: 30m\n")
        cls.tw.start_agent(extra_args=["--config", cls.config])
        cls.exported = None

    # helpers (launch, findings, about, wait_for: test_policy.LauncherReaders)

    def export(self, *filters):
        return self.tw.ctl("profile", "export", *filters)

    # scenarios

    def test_10_learned_reader_reaches_the_collector_and_is_exported(self):
        self.launch(LEARNED)
        deadline = time.monotonic() + UPLOAD_TIMEOUT
        out = ""
        while time.monotonic() < deadline:
            out = self.export("--namespace", "payments", "--workload", "a*")
            if LEARNED in out:
                break
            time.sleep(2)
        self.assertIn("- exe: %s" % LEARNED, out,
                      "not exported within %ds:\n%s\nagent log:\n%s\ncollector log:\n%s" % (
                          UPLOAD_TIMEOUT, out, self.tw.agent_stderr()[-3000:],
                          simnode.read_text(self.tw.collector_log)[-2000:]))
        # The entrypoint read its token all along; learned like any reader.
        self.assertIn("- exe: /twbin/launcher", out)
        self.assertIn("namespace: payments", out)
        self.assertIn("workload: api", out)
        self.assertIn("container: /twbin/launcher", out)
        self.assertIn("service_account: api", out)
        self.assertIn("learned on 1 node (sim-node)", out)
        self.assertIn("learning still open", out)
        self.assertIn("profile upload: ", self.tw.agent_stderr())
        # Learned during the learning window: no finding for it.
        self.assertEqual(self.about(LEARNED), [])
        type(self).exported = out

    def test_20_filters_select_the_workload(self):
        self.assertIsNotNone(self.exported, "needs test_10")
        self.assertNotIn("workload:", self.export("--namespace", "other"))
        self.assertNotIn("workload:", self.export("--workload", "web-*"))
        self.assertNotIn("workload:", self.export("--node", "another-node"))
        self.assertIn(LEARNED, self.export("--node", "sim-node", "--workload", "api"))

    def test_30_exported_policy_is_accepted_and_makes_the_read_expected(self):
        self.assertIsNotNone(self.exported, "needs test_10")
        simnode.stop_process(self.tw.agent)
        # The export is the whole policy of an agent that learns nothing and starts from an
        # empty state dir: only the exported entry can make the learned reader expected.
        config = os.path.join(self.node.tmp, "exported.yaml")
        with open(config, "w") as f:
            f.write(self.exported)
            f.write("  learning:\n    enabled: false\n")
        self.tw.state_dir = os.path.join(self.node.tmp, "state2")
        self.tw.findings_path = os.path.join(self.node.tmp, "findings2.jsonl")
        self.tw.start_agent(extra_args=["--config", config])
        self.assertIn("learning off", self.tw.agent_stderr())
        self.launch(LEARNED, sleep_ms=1500)
        time.sleep(0.5)
        self.launch("/opt/unlisted/reader")
        control = self.wait_for("/opt/unlisted/reader")
        self.assertEqual(control[0].get("ruleId"), "TW001", base.describe(control[0]))
        time.sleep(1)
        self.assertEqual(self.about(LEARNED), [], "the exported reader raised: %s" % "; ".join(
            base.describe(f) for f in self.about(LEARNED)))


if __name__ == "__main__":
    base.main()
