#!/usr/bin/python3
"""End-to-end tests for policy, learned baselines and quiet defaults (issue 5).

A simulated node (deploy/demo/simnode.py) with one pod whose entrypoint is a
small launcher: it rereads the pod's token every 100 ms (like client-go, ten
times as often) and starts reader binaries on request, so readers descend
from the entrypoint (no exec session) and are judged by TW001's policy and
baseline logic. The real agent runs with a --config whose `policy:` key sets a
short learning window; findings are read from the agent's JSON lines output.

Usage (root): python3 tests/e2e/test_policy.py [PolicyScenarios|PolicyConfigErrors]
Exit status 77 means skipped. Environment as for test_token_reads.py, plus
TOKENWATCH_E2E_ENTRYPOINT_SECONDS (default 60): how long the entrypoint must
read without a finding.
"""

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_token_reads as base  # noqa: E402
from test_token_reads import simnode  # noqa: E402

WINDOW_S = 8
ENTRYPOINT_SECONDS = int(os.environ.get("TOKENWATCH_E2E_ENTRYPOINT_SECONDS", "60"))
TIMEOUT = base.FINDING_TIMEOUT

LAUNCHER_C = r"""
// Entrypoint: rereads the token every 100 ms and runs the programs named in
// files dropped into /tmp/launch ("PATH SLEEP_MS"), as children.
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(void) {
  char buf[8192];
  const struct timespec period = {0, 100 * 1000 * 1000};
  mkdir("/tmp/launch", 0755);
  for (;;) {
    int fd = open("/var/run/secrets/kubernetes.io/serviceaccount/token", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) { while (read(fd, buf, sizeof(buf)) > 0) {} close(fd); }
    DIR* d = opendir("/tmp/launch");
    struct dirent* e;
    while (d != NULL && (e = readdir(d)) != NULL) {
      if (e->d_name[0] == '.') continue;
      char path[512], line[512] = {0}, exe[400] = {0}, ms[32] = "0";
      snprintf(path, sizeof(path), "/tmp/launch/%s", e->d_name);
      FILE* f = fopen(path, "r");
      if (f == NULL) continue;
      if (fgets(line, sizeof(line), f) == NULL) line[0] = 0;
      fclose(f);
      unlink(path);
      if (sscanf(line, "%399s %31s", exe, ms) < 1) continue;
      if (fork() == 0) { execl(exe, exe, ms, (char*)NULL); _exit(127); }
    }
    if (d != NULL) closedir(d);
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
    nanosleep(&period, NULL);
  }
}
"""

READER_C = r"""
// Reads the token once, then lives argv[1] ms (so the agent can hash it).
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char** argv) {
  char buf[8192];
  int fd = open("/var/run/secrets/kubernetes.io/serviceaccount/token", O_RDONLY);
  if (fd >= 0) { while (read(fd, buf, sizeof(buf)) > 0) {} close(fd); }
  long ms = argc > 1 ? atol(argv[1]) : 0;
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
  return 0;
}
"""


def setUpModule():
    base.setUpModule()


def policy_yaml(reader_sha, extra_allowed=()):
    allowed = ["/opt/allowed/reader"] + list(extra_allowed)
    lines = ["log_level: info", "policy:", "  learning:", "    window: %ds" % WINDOW_S,
             "  workloads:", "    - namespace: payments", "      workload: api",
             "      executables:"]
    lines += ["        - %s" % a for a in allowed]
    lines += ["        - exe: /opt/pinned/reader", "          sha256: %s" % reader_sha]
    # Pinned to other content: the reader there is not the allowed binary.
    lines += ["        - exe: /opt/badsha/reader", "          sha256: %s" % ("0" * 64)]
    return "\n".join(lines) + "\n"


class LauncherReaders:
    """Mixin for a test class whose pod's entrypoint is LAUNCHER_C: runs
    READER_C copies as its children and finds their findings in the agent's
    --findings-out file. Needs self.app (the container), self.reader_bin (the
    built reader) and self.tw."""

    def findings(self):
        return self.tw.local_findings()

    def about(self, path):
        return [f for f in self.findings() if base._process(f).get("exe", "").endswith(path)]

    def launch(self, path, sleep_ms=300):
        """Installs the reader at `path` in the container (once) and has the
        entrypoint run it."""
        host = os.path.join(self.app.rootfs, path.lstrip("/"))
        if not os.path.exists(host):
            self.app.install(self.reader_bin, path)
        d = os.path.join(self.app.rootfs, "tmp", "launch")
        os.makedirs(d, exist_ok=True)
        name = "%d" % time.monotonic_ns()
        with open(os.path.join(d, "." + name), "w") as f:
            f.write("%s %d\n" % (path, sleep_ms))
        os.rename(os.path.join(d, "." + name), os.path.join(d, name))

    def wait_for(self, path, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.about(path)
            if found:
                return found
            time.sleep(0.2)
        self.fail("no finding for %s within %ds; findings:\n  %s\nagent log:\n%s" % (
            path, timeout, "\n  ".join(base.describe(f) for f in self.findings()) or "(none)",
            self.tw.agent_stderr()[-3000:]))


class PolicyScenarios(LauncherReaders, unittest.TestCase):
    """One node and one agent; tests run in name order and build on each
    other (the learning window closes between test_10 and test_20)."""

    @classmethod
    def setUpClass(cls):
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-policy-")
        cls.addClassCleanup(node.close)
        bindir = node.static_tools({"launcher": LAUNCHER_C, "reader": READER_C})
        cls.reader_bin = os.path.join(bindir, "reader")
        with open(cls.reader_bin, "rb") as f:
            cls.reader_sha = hashlib.sha256(f.read()).hexdigest()
        # Deployment-style pod name: the workload is "api".
        cls.pod = node.add_pod("payments", "api-7d9c8b6f4-zq2wn", "api")
        cls.app = node.add_container(cls.pod, "api", entrypoint_argv=("/twbin/launcher",),
                                     extra_mounts=[(bindir, "/twbin")])
        cls.config = os.path.join(node.tmp, "agent.yaml")
        cls.write_config(policy_yaml(cls.reader_sha))
        cls.tw = simnode.Tokenwatch(node, base.BIN_DIR)
        cls.start_agent()
        cls.started = time.monotonic()

    @classmethod
    def write_config(cls, text):
        tmp = cls.config + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, cls.config)

    @classmethod
    def start_agent(cls):
        cls.tw.start_agent(extra_args=["--config", cls.config])

    # helpers

    def assert_quiet(self, quiet_paths, control_path):
        """Launches the quiet readers, then a control that must raise TW001;
        once the control's finding is out, the earlier reads were judged."""
        for p in quiet_paths:
            self.launch(p, sleep_ms=1500)
        time.sleep(0.5)
        self.launch(control_path)
        control = self.wait_for(control_path)
        self.assertEqual(control[0].get("ruleId"), "TW001", base.describe(control[0]))
        self.assertEqual(control[0].get("severity"), "SEVERITY_MEDIUM")
        time.sleep(1)
        for p in quiet_paths:
            self.assertEqual(self.about(p), [], "expected reader %s raised: %s" % (
                p, "; ".join(base.describe(f) for f in self.about(p))))

    # scenarios

    def test_10_learned_during_window(self):
        time.sleep(1)
        self.assertLess(time.monotonic() - self.started, WINDOW_S - 2, "window already over")
        self.launch("/opt/learned/reader")
        time.sleep(2)
        self.assertEqual(self.about("/opt/learned/reader"), [])

    def test_20_after_window_new_reader_raises_learned_does_not(self):
        time.sleep(max(0, self.started + WINDOW_S + 1 - time.monotonic()))
        self.assert_quiet(["/opt/learned/reader"], "/opt/new/reader")

    def test_30_allowlist_by_path_and_sha256_copy_elsewhere_raises(self):
        self.assert_quiet(["/opt/allowed/reader", "/opt/pinned/reader"], "/opt/copied/reader")
        # The path is allowed only with another sha256: this binary raises.
        self.launch("/opt/badsha/reader")
        f = self.wait_for("/opt/badsha/reader")[0]
        self.assertEqual(f.get("ruleId"), "TW001", base.describe(f))

    def test_40_shell_is_high_even_when_learning_would_allow(self):
        # busybox cat started by the entrypoint: not an exec session, still a tool.
        path = self.app.install_applet("/opt/tool/busybox.pcat")
        d = os.path.join(self.app.rootfs, "tmp", "launch")
        # busybox.* takes its applet from argv[1]; a script supplies it.
        with open(os.path.join(self.app.rootfs, "opt", "tool", "run.sh"), "w") as f:
            f.write("#!/bin/sh\n%s cat %s/token >/dev/null\n" % (path, simnode.SA_MOUNT))
        os.chmod(os.path.join(self.app.rootfs, "opt", "tool", "run.sh"), 0o755)
        with open(os.path.join(d, ".sh"), "w") as f:
            f.write("/opt/tool/run.sh 0\n")
        os.rename(os.path.join(d, ".sh"), os.path.join(d, "sh1"))
        f = self.wait_for("/opt/tool/busybox.pcat")[0]
        self.assertEqual(f.get("ruleId"), "TW001", base.describe(f))
        self.assertEqual(f.get("severity"), "SEVERITY_HIGH", base.describe(f))
        self.assertEqual(f.get("severityReasons"),
                         ["reader is a shell, interpreter or transfer tool"], base.describe(f))

    def test_50_rejected_reload_keeps_policy_good_reload_applies(self):
        def count(words):
            return self.tw.agent_stderr().count(words)
        reloaded = count("policy reloaded")
        with open(self.config, "a") as f:
            f.write("    - namespace: payments\n      bogus: 1\n")
        deadline = time.monotonic() + 10
        while "policy reload rejected" not in self.tw.agent_stderr():
            self.assertLess(time.monotonic(), deadline, "bad config not rejected:\n" +
                            self.tw.agent_stderr()[-2000:])
            time.sleep(0.2)
        self.assertIn("key 'policy.workloads[1].bogus': unknown key", self.tw.agent_stderr())
        # Written in place, the half-written file must not have been applied.
        self.assertEqual(count("policy reloaded"), reloaded, self.tw.agent_stderr()[-2000:])
        # More bad files, each rejected with its own error; none applies.
        good = policy_yaml(self.reader_sha)
        for bad, words in (
                (good.replace("workload: api", "workload: 'api-[x'"), "bad glob 'api-[x'"),
                (good.replace("window: %ds" % WINDOW_S, "window: soon"),
                 "key 'policy.learning.window': 'soon' is not a positive duration"),
                (good.replace("log_level: info", "log_level: loud"), "key 'log_level'")):
            rejected = count("policy reload rejected")
            self.write_config(bad)
            deadline = time.monotonic() + 10
            while count("policy reload rejected") <= rejected:
                self.assertLess(time.monotonic(), deadline, "not rejected: %s\n%s" % (
                    words, self.tw.agent_stderr()[-2000:]))
                time.sleep(0.2)
            self.assertIn(words, self.tw.agent_stderr())
        self.assertEqual(count("policy reloaded"), reloaded, self.tw.agent_stderr()[-2000:])
        self.assert_quiet(["/opt/allowed/reader"], "/opt/new4/reader")
        self.write_config(policy_yaml(self.reader_sha, ["/opt/added/reader"]))
        deadline = time.monotonic() + 10
        while count("policy reloaded") <= reloaded:
            self.assertLess(time.monotonic(), deadline, "good config not reloaded")
            time.sleep(0.2)
        self.assert_quiet(["/opt/added/reader", "/opt/allowed/reader"], "/opt/new5/reader")
        # SIGHUP reloads too, even when the file did not change.
        reloaded = count("policy reloaded")
        os.kill(self.tw.agent.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while count("policy reloaded") <= reloaded:
            self.assertLess(time.monotonic(), deadline, "SIGHUP did not reload")
            time.sleep(0.2)

    def test_60_profile_survives_restart_and_exports(self):
        simnode.stop_process(self.tw.agent)
        self.start_agent()
        self.assert_quiet(["/opt/learned/reader"], "/opt/new2/reader")
        res = subprocess.run([self.tw.agent_bin, "--export-profile", "--state-dir",
                              self.tw.state_dir, "--config", self.config],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("workload: api", res.stdout)
        self.assertIn("/opt/learned/reader", res.stdout)
        self.assertNotIn("/opt/new/reader", res.stdout)
        self.assertIn("learning complete", res.stdout)

    def test_90_entrypoint_rereads_raise_nothing(self):
        time.sleep(max(0, self.started + ENTRYPOINT_SECONDS - time.monotonic()))
        self.assertEqual(self.about("/twbin/launcher"), [],
                         "the entrypoint's own reads raised findings")
        records = self.tw.metric_value("tokenwatch_kernel_records_total")
        print("\nentrypoint read for %.0fs at 10/s; kernel records so far: %s" % (
            time.monotonic() - self.started, records), file=sys.stderr)


class PolicyConfigErrors(unittest.TestCase):
    """A bad config stops the agent at start with one line naming file, line
    and key (exit 2), before it needs BPF."""

    # (config text, words the one-line error must contain after "config PATH")
    CASES = [
        # unknown keys
        ("policy:\n  workloads:\n    - namespace: a\n      exe: /x\n",
         ":4: key 'policy.workloads[0].exe': unknown key"),
        ("bogus_key: 1\n", ":1: unknown key 'bogus_key'"),
        ("policy:\n  workloads:\n    - executables:\n        - {exe: /x, sha: 1}\n",
         ":4: key 'policy.workloads[0].executables[0].sha': unknown key (known: exe, sha256)"),
        # wrong types
        ("policy:\n  workloads: 3\n", ":2: key 'policy.workloads': expected a list"),
        ("policy:\n  workloads:\n    - apiserver_contact: maybe\n",
         ":3: key 'policy.workloads[0].apiserver_contact': 'maybe' is not true or false"),
        ("lineage_depth: many\n", ":1: key 'lineage_depth': 'many' is not a whole number"),
        # bad globs and paths
        ("policy:\n  workloads:\n    - workload: 'a[b'\n",
         ":3: key 'policy.workloads[0].workload': bad glob 'a[b'"),
        ("policy:\n  workloads:\n    - executables: [vault]\n",
         ":3: key 'policy.workloads[0].executables[0]': 'vault' is not a full path"),
        ("policy:\n  host_executables:\n    - {exe: /bin/x, sha256: abc}\n",
         ":3: key 'policy.host_executables[0].sha256': 'abc' is not 64 hexadecimal digits"),
        # bad durations
        ("policy:\n  learning:\n    window: soon\n",
         ":3: key 'policy.learning.window': 'soon' is not a positive duration"),
        ("dedup_window: 10 minutes\n", ":1: key 'dedup_window': '10 minutes' is not a duration"),
        # duplicates, rules, syntax
        ("policy:\n  workloads:\n    - {namespace: a}\n    - {namespace: a}\n",
         ":4: key 'policy.workloads[1]': duplicate workload"),
        ("policy:\n  rules:\n    TW001: loud\n",
         ":3: key 'policy.rules.TW001': 'loud' is not one of off, low, medium, high, critical"),
        ("policy:\n  rules:\n    TW999: off\n", ":3: key 'policy.rules.TW999': unknown rule"),
        ("policy:\n  rules: {TW001: low\n", ":3: "),
    ]

    def setUp(self):
        self.agent = simnode.find_binary(base.BIN_DIR, "tokenwatch-agent", "TOKENWATCH_AGENT")
        if self.agent is None:
            self.skipTest("tokenwatch-agent not built")

    def run_agent(self, path, state_dir, user=None):
        argv = [self.agent, "--config", path, "--state-dir", state_dir]
        if user is not None:
            argv = ["setpriv", "--reuid", str(user), "--regid", str(user),
                    "--clear-groups"] + argv
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def assert_one_line(self, res, path, words, what):
        self.assertEqual(res.returncode, 2, "%s: exit %d: %s" % (what, res.returncode,
                                                                 res.stderr))
        err = res.stderr.strip()
        self.assertEqual(len(err.splitlines()), 1, "%s: %s" % (what, err))
        self.assertIn("config %s%s" % (path, words), err, what)

    def test_each_bad_config_is_one_clear_line(self):
        self.assertGreaterEqual(len(self.CASES), 10)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "agent.yaml")
            for text, words in self.CASES:
                with open(path, "w") as f:
                    f.write(text)
                self.assert_one_line(self.run_agent(path, tmp), path, words, repr(text))

    def test_missing_and_unreadable_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            missing = os.path.join(tmp, "missing.yaml")
            self.assert_one_line(self.run_agent(missing, tmp), missing, ": cannot read",
                                 "missing file")
            # Root reads any file: an unprivileged user meets a mode-000 one.
            os.chmod(tmp, 0o755)
            unreadable = os.path.join(tmp, "unreadable.yaml")
            with open(unreadable, "w") as f:
                f.write("log_level: info\n")
            os.chmod(unreadable, 0)
            self.assert_one_line(self.run_agent(unreadable, tmp, user=65534), unreadable,
                                 ": cannot read", "unreadable file")


if __name__ == "__main__":
    base.main()
