#!/usr/bin/python3
"""End-to-end: rereads cost one record per process per window (issue 5).

client-go rereads its token every minute; a busy controller more often. The
hooks count a process's rereads of a token within the dedup window instead of
making a record of each (in the kernel for the BPF hook modes, at fanotify
intake in fanotify mode), and the count still reaches the finding.

A simulated node with one pod whose entrypoint rereads its token every 100 ms
(expected: no finding, and at most one record per window), then an exec
session that reads the token in a loop from one process (unexpected: one
TW004 finding whose count is every open). The agent runs with a short dedup
window so that a window closes within the test.

Usage (root): python3 tests/e2e/test_reread.py
Exit status 77 means skipped. Environment as for test_token_reads.py, plus
TOKENWATCH_E2E_ENTRYPOINT_SECONDS (default 60): how long the entrypoint
rereads under observation; TOKENWATCH_E2E_HOOK_MODE picks the hook mode.
"""

import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_token_reads as base  # noqa: E402
from test_token_reads import simnode  # noqa: E402

WINDOW_S = 15
ENTRYPOINT_SECONDS = int(os.environ.get("TOKENWATCH_E2E_ENTRYPOINT_SECONDS", "60"))
STORM_OPENS = 500

REREADER_C = r"""
// Entrypoint: rereads the token every 100 ms; counts reads in /tmp/reads.
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(void) {
  char buf[8192];
  unsigned long ok = 0;
  const struct timespec period = {0, 100 * 1000 * 1000};
  for (;;) {
    int fd = open("/var/run/secrets/kubernetes.io/serviceaccount/token", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      while (read(fd, buf, sizeof(buf)) > 0) {}
      close(fd);
      ok++;
    }
    FILE* f = fopen("/tmp/.reads", "w");
    if (f != NULL) { fprintf(f, "%lu\n", ok); fclose(f); rename("/tmp/.reads", "/tmp/reads"); }
    nanosleep(&period, NULL);
  }
}
"""

STORM_C = r"""
// Opens and reads the token argv[1] times, 2 ms apart, from one process.
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char** argv) {
  char buf[8192];
  long n = argc > 1 ? atol(argv[1]) : 1;
  const struct timespec gap = {0, 2 * 1000 * 1000};
  for (long i = 0; i < n; i++) {
    int fd = open("/var/run/secrets/kubernetes.io/serviceaccount/token", O_RDONLY);
    if (fd < 0) return 1;
    while (read(fd, buf, sizeof(buf)) > 0) {}
    close(fd);
    nanosleep(&gap, NULL);
  }
  return 0;
}
"""


def setUpModule():
    base.setUpModule()


class RereadScenarios(unittest.TestCase):
    """One node and one agent; tests run in name order."""

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-reread-")
        cls.addClassCleanup(node.close)
        bindir = node.static_tools({"rereader": REREADER_C, "storm": STORM_C})
        cls.pod = node.add_pod("shop", "cart-6f7d8c9b5-k2m4p", "cart")
        cls.app = node.add_container(cls.pod, "cart", entrypoint_argv=("/twbin/rereader",),
                                     extra_mounts=[(bindir, "/twbin")])
        cls.tw = simnode.Tokenwatch(node, base.BIN_DIR)
        cls.tw.start_collector()
        cls.tw.start_agent(config_text="dedup_window: %ds\n" % WINDOW_S)
        cls.mode = cls.tw.hook_mode() or "unknown"

    def reads(self):
        try:
            with open(os.path.join(self.app.rootfs, "tmp", "reads")) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def opens(self):
        body = self.tw.metrics()
        return (simnode.metric_sum(body, "tokenwatch_token_opens_total", {"outcome": "reported"}),
                simnode.metric_sum(body, "tokenwatch_token_opens_total", {"outcome": "folded"}),
                simnode.metric_sum(body, "tokenwatch_kernel_records_total", {"type": "token_open"}))

    def findings_of(self, exe_suffix):
        """The collector's findings whose reader is exe_suffix."""
        return [f for f in self.tw.findings()
                if base._process(f).get("exe", "").endswith(exe_suffix)]

    def local_exports_of(self, exe_suffix):
        """Every export of a finding whose reader is exe_suffix, in order, from
        the agent's --findings-out file."""
        return [f for f in self.tw.local_findings()
                if base._process(f).get("exe", "").endswith(exe_suffix)]

    def test_10_entrypoint_rereading_every_100ms_costs_a_record_a_window(self):
        # Let the agent's first record of the entrypoint arrive, then watch.
        time.sleep(2)
        reads0 = self.reads()
        reported0, folded0, records0 = self.opens()
        time.sleep(ENTRYPOINT_SECONDS)
        time.sleep(2)  # the agent reads the counts every second
        reads = self.reads() - reads0
        reported, folded, records = (b - a for a, b in zip((reported0, folded0, records0),
                                                            self.opens()))
        self.assertGreater(reads, ENTRYPOINT_SECONDS * 5,
                           "the entrypoint barely reread its token; the test proves nothing")
        windows = ENTRYPOINT_SECONDS // WINDOW_S + 2
        self.assertLessEqual(records, windows, "%d rereads, %d records in %ds with a %ds window "
                             "(mode %s)" % (reads, records, ENTRYPOINT_SECONDS, WINDOW_S,
                                            self.mode))
        # Every reread is still counted (fanotify may merge a few queued
        # events of one process before the agent reads them).
        self.assertGreaterEqual(reported + folded, 0.9 * reads,
                                "reads %d, reported %d, folded %d" % (reads, reported, folded))
        self.assertLessEqual(reported + folded, reads + 15)
        self.assertEqual(self.findings_of("/twbin/rereader"), [],
                         "the entrypoint's rereads raised a finding")
        sys.stderr.write("mode %s: %d rereads in %ds -> %d records, %d folded\n" % (
            self.mode, reads, ENTRYPOINT_SECONDS, records, folded))

    def test_20_one_process_rereading_in_an_exec_session_is_one_finding_with_every_open(self):
        records0 = self.opens()[2]
        started = time.monotonic()
        self.app.exec(["/twbin/storm", str(STORM_OPENS)], timeout=60)
        # The finding goes out when raised, and once more with its final count
        # when its window closes: wait for that second export.
        deadline = time.monotonic() + WINDOW_S + 20
        while True:
            sent = self.local_exports_of("/twbin/storm")
            if sent and sum(f.get("id") == sent[0].get("id") for f in sent) >= 2:
                break
            if time.monotonic() > deadline:
                self.fail("the storm's finding was not sent again within %ds of the storm: %s"
                          % (WINDOW_S + 20, "; ".join(base.describe(f) for f in sent) or
                             "never sent"))
            time.sleep(0.5)
        time.sleep(2)  # let a third export, which must not come, arrive before counting
        sent = self.local_exports_of("/twbin/storm")
        self.assertEqual(len({f.get("id") for f in sent}), 1,
                         "; ".join(base.describe(f) for f in sent))
        # "Sent again at most once per window" (issue 5).
        self.assertLessEqual(len(sent), 2, "; ".join(base.describe(f) for f in sent))
        final = sent[-1]
        self.assertEqual(final.get("ruleId"), "TW004", base.describe(final))
        count = base.count_of(final)
        if self.mode == "fanotify":
            # A lower bound, by design: the kernel merges a process's identical
            # queued events before the agent reads them, and the agent paces its
            # reads during a reread storm (so more of them merge). Measured
            # here: 437 to 447 of 500.
            self.assertGreaterEqual(count, 0.6 * STORM_OPENS, base.describe(final))
            self.assertLessEqual(count, STORM_OPENS, base.describe(final))
        else:
            # The kernel counts every open.
            self.assertEqual(count, STORM_OPENS, base.describe(final))
        # The collector holds the one finding with the final count.
        deadline = time.monotonic() + base.FINDING_TIMEOUT
        while True:
            found = self.findings_of("/twbin/storm")
            if (len(found) == 1 and base.count_of(found[0]) == count) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(len(found), 1, "; ".join(base.describe(f) for f in found) or "none")
        self.assertEqual(found[0].get("id"), final.get("id"), base.describe(found[0]))
        self.assertEqual(base.count_of(found[0]), count, base.describe(found[0]))
        # The storm is one record; the entrypoint adds one a window meanwhile.
        windows = int(time.monotonic() - started) // WINDOW_S + 2
        self.assertLessEqual(self.opens()[2] - records0, 1 + windows)
        sys.stderr.write("mode %s: %d opens by one process -> count %d, sent %d times\n" % (
            self.mode, STORM_OPENS, count, len(sent)))


if __name__ == "__main__":
    base.main()
