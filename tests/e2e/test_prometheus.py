#!/usr/bin/python3
"""End-to-end tests for metrics and health (issue #7's acceptance list).

PrometheusScrape: Debian's real `prometheus` server, run from a temporary
config, scrapes the real agent and the real collector on loopback; an attacker
pod on the simulated node (deploy/demo/simnode.py) reads another pod's token
through a hostPath mount; the test reads back through Prometheus' HTTP query
API that tokenwatch_findings_total{rule="TW002"} went up and that `up` is 1
for both targets. It also runs `promtool check metrics` on both live
endpoints and has the server load deploy/prometheus/tokenwatch-rules.yaml.

RingBufferDrops: an agent with a 16 KiB ring (ring_buffer_bytes) is stalled
with SIGSTOP while a host process reads a token 300 times; after SIGCONT the
drop counter has risen and a TW090 sensor-events-lost finding counts exactly
the lost records.

Readiness: /readyz is 503 while the probes load and 200 after; it turns 503
when the kubelet root vanishes and 200 when it is back.

Needs root, BPF and runc (the simulated node), and the prometheus package for
PrometheusScrape. Exit status 77 means skipped, unless TOKENWATCH_REQUIRE_BPF=1.

Usage (root): python3 tests/e2e/test_prometheus.py [PrometheusScrape|RingBufferDrops|Readiness]
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_token_reads as base  # noqa: E402  (prerequisites, paths)
from test_token_reads import simnode  # noqa: E402

BIN_DIR = base.BIN_DIR
SOURCE_DIR = base.SOURCE_DIR
RULES = os.path.join(SOURCE_DIR, "deploy", "prometheus", "tokenwatch-rules.yaml")
TIMEOUT = 60


def setUpModule():
    base.setUpModule()


def wait_until(what, predicate, timeout=TIMEOUT, interval=0.2, details=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %ds. %s" % (what, timeout, details()))
        time.sleep(interval)


def start_collector(tw, metrics_addr):
    """The collector on a free gRPC port with its metrics on metrics_addr."""
    tw.collector = tw._spawn(
        [tw.collector_bin, "--listen", "127.0.0.1:0", "--db", tw.db_path,
         "--metrics-address", metrics_addr], tw.collector_log, "collector")
    m = wait_until("collector listening",
                   lambda: re.search(r"listening on (\S+:\d+)", simnode.read_text(tw.collector_log)),
                   details=lambda: simnode.read_text(tw.collector_log)[-2000:])
    tw.collector_addr = m.group(1)
    wait_until("collector metrics",
               lambda: "metrics on" in simnode.read_text(tw.collector_log),
               details=lambda: simnode.read_text(tw.collector_log)[-2000:])


def sample(tw, name, **labels):
    """Sum of the agent's samples of metric `name` whose labels include `labels`
    (None when there is none)."""
    total, seen = 0.0, False
    for line in tw.metrics().splitlines():
        m = re.match(r"^%s(?:\{([^}]*)\})?\s+(\S+)$" % re.escape(name), line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
            seen = True
    return total if seen else None


def get(url, timeout=2):
    """(status, body) of a GET, the body of error answers included (the
    reason /readyz gives); (None, "") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None, ""


def promtool_check(test, url):
    status, body = simnode.http_get(url)
    test.assertEqual(status, 200, url)
    res = subprocess.run(["promtool", "check", "metrics"], input=body.encode(),
                         capture_output=True, timeout=30)
    test.assertEqual(res.returncode, 0, "promtool check metrics %s:\n%s%s" % (
        url, res.stdout.decode(), res.stderr.decode()))


class PrometheusScrape(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("prometheus") is None or shutil.which("promtool") is None:
            msg = "prometheus/promtool not installed (Debian package prometheus)"
            if base.REQUIRE:
                raise RuntimeError(msg)
            raise unittest.SkipTest(msg)
        simnode.install_signal_handlers()
        cls.node = node = simnode.SimNode(prefix="tokenwatch-prom-")
        cls.addClassCleanup(node.close)
        cls.victim = node.add_pod("payments", "payments-api-7d9c8", "payments-api")
        cls.attacker_pod = node.add_pod("tools", "debug-shell-5f6b4", "default")
        cls.attacker = node.add_attacker_container(cls.attacker_pod)
        cls.tw = tw = simnode.Tokenwatch(node, BIN_DIR)
        cls.collector_metrics = "127.0.0.1:%d" % simnode.free_port()
        start_collector(tw, cls.collector_metrics)
        tw.start_agent()

        # Prometheus: its own config, data directory and port; scrapes every second.
        cls.prom_dir = os.path.join(node.tmp, "prometheus")
        os.makedirs(cls.prom_dir)
        config = os.path.join(cls.prom_dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: tokenwatch-agent
    static_configs:
      - targets: ['%s']
  - job_name: tokenwatch-collector
    static_configs:
      - targets: ['%s']
""" % (RULES, tw.metrics_addr, cls.collector_metrics))
        cls.prom_addr = "127.0.0.1:%d" % simnode.free_port()
        cls.prom_log = os.path.join(cls.prom_dir, "prometheus.log")
        tw._spawn(["prometheus", "--config.file=" + config,
                   "--storage.tsdb.path=" + os.path.join(cls.prom_dir, "data"),
                   "--web.listen-address=" + cls.prom_addr],
                  cls.prom_log, "prometheus")
        wait_until("prometheus ready",
                   lambda: simnode.http_get("http://%s/-/ready" % cls.prom_addr)[0] == 200,
                   details=lambda: simnode.read_text(cls.prom_log)[-3000:])

    def query(self, promql):
        """The instant vector for promql: {frozenset(labels): value}."""
        url = "http://%s/api/v1/query?%s" % (self.prom_addr,
                                             urllib.parse.urlencode({"query": promql}))
        status, body = simnode.http_get(url, timeout=5)
        self.assertEqual(status, 200, "%s: %s" % (promql, body[:500]))
        data = json.loads(body)
        self.assertEqual(data["status"], "success", body[:500])
        return {frozenset(r["metric"].items()): float(r["value"][1])
                for r in data["data"]["result"]}

    def scalar(self, promql):
        values = list(self.query(promql).values())
        return values[0] if values else None

    def test_1_both_endpoints_pass_promtool(self):
        promtool_check(self, "http://%s/metrics" % self.tw.metrics_addr)
        promtool_check(self, "http://%s/metrics" % self.collector_metrics)

    def test_2_attack_raises_the_findings_counter_and_both_targets_are_up(self):
        for job in ("tokenwatch-agent", "tokenwatch-collector"):
            wait_until("up{job=%s} == 1" % job,
                       lambda: self.scalar('up{job="%s"}' % job) == 1,
                       details=lambda: simnode.read_text(self.prom_log)[-2000:])
        # Scraped at least once before the attack, so the increase is visible.
        wait_until("agent series in prometheus",
                   lambda: self.scalar('tokenwatch_build_info{job="tokenwatch-agent"}') == 1)
        promql = 'sum(tokenwatch_findings_total{job="tokenwatch-agent",rule="TW002"}) or vector(0)'
        before = self.scalar(promql)
        self.assertEqual(before, 0)

        # The attack: a pod with the node's pods dir mounted reads another pod's token.
        reader = self.attacker.install_applet("/opt/tw/busybox.prom")
        self.attacker.exec(["sh", "-c", "%s cat %s >/dev/null" % (
            reader, self.node.host_path_in_attacker(self.victim))])

        wait_until('tokenwatch_findings_total{rule="TW002"} rises in prometheus',
                   lambda: (self.scalar(promql) or 0) > before,
                   details=lambda: "agent /metrics:\n" + "\n".join(
                       l for l in self.tw.metrics().splitlines() if "findings" in l) +
                   "\nagent log:\n" + self.tw.agent_stderr()[-2000:])
        series = self.query('tokenwatch_findings_total{rule="TW002"}')
        self.assertEqual(len(series), 1, series)
        labels = dict(next(iter(series)))
        self.assertEqual(labels.get("severity"), "critical", labels)
        # Delivered and counted by the collector as well.
        wait_until("collector stored the finding",
                   lambda: (self.scalar("tokenwatch_collector_findings_stored_total") or 0) >= 1)
        self.assertEqual(self.scalar('up{job="tokenwatch-agent"}'), 1)
        self.assertEqual(self.scalar('up{job="tokenwatch-collector"}'), 1)
        self.assertEqual(self.scalar("tokenwatch_collector_connected_agents"), 1)

    def test_3_rules_loaded_and_healthy(self):
        status, body = simnode.http_get("http://%s/api/v1/rules" % self.prom_addr)
        self.assertEqual(status, 200)
        groups = json.loads(body)["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        for name in ("TokenwatchAgentDown", "TokenwatchEventsLost", "TokenwatchCollectorDown"):
            self.assertIn(name, rules)
        wait_until("rules evaluated", lambda: all(
            r.get("health") == "ok" for r in self.rules()), timeout=30,
            details=lambda: json.dumps(self.rules())[:2000])

    def rules(self):
        _, body = simnode.http_get("http://%s/api/v1/rules" % self.prom_addr)
        return [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]


class RingBufferDrops(unittest.TestCase):
    def test_stalled_reader_with_a_tiny_ring_loses_records_and_raises_tw090(self):
        simnode.install_signal_handlers()
        node = simnode.SimNode(prefix="tokenwatch-drops-")
        self.addCleanup(node.close)
        victim = node.add_pod("payments", "payments-api-7d9c8", "payments-api")
        tw = simnode.Tokenwatch(node, BIN_DIR)
        # The syscall tracepoints deliver every token open through the ring buffer (other
        # hook modes may pass some opens elsewhere, e.g. fanotify's own queue).
        tw.start_agent(extra_args=["--hook-mode", "tracepoint"],
                       config_text="ring_buffer_bytes: 16384\n")
        cat = node.install_host_tool("/bin/cat", "tw/cat.drops")
        findings = tw.local_findings

        # The small ring works while the agent keeps up: one read, one finding, no loss.
        simnode.host_run([cat, victim.token_path], check=True)
        wait_until("TW003 for the first read",
                   lambda: any(f.get("ruleId") == "TW003" for f in findings()),
                   details=lambda: tw.agent_stderr()[-2000:])
        self.assertEqual(sample(tw, "tokenwatch_kernel_drops_total", reason="ring_full"), 0,
                         "lost records before the stall")

        # Stall the reader, then read far more than 16 KiB of records.
        tw.agent.send_signal(signal.SIGSTOP)
        try:
            with open(os.devnull, "wb") as devnull:
                for _ in range(300):
                    subprocess.run([cat, victim.token_path], stdout=devnull, check=True)
        finally:
            tw.agent.send_signal(signal.SIGCONT)

        def lost():
            v = sample(tw, "tokenwatch_kernel_drops_total", reason="ring_full")
            return v if v else None
        ring_full = wait_until("ring_full drops counted", lost,
                               details=lambda: tw.metrics()[-3000:])
        self.assertGreater(ring_full, 0)
        self.assertLess(ring_full, 300, "some records should have fit in the ring")
        tw090 = wait_until("a TW090 finding",
                           lambda: [f for f in findings() if f.get("ruleId") == "TW090"],
                           details=lambda: tw.agent_stderr()[-2000:])
        self.assertEqual(len(tw090), 1, tw090)
        f = tw090[0]
        self.assertEqual(f.get("ruleName"), "sensor-events-lost")
        self.assertEqual(f.get("severity"), "SEVERITY_HIGH")
        update_failed = sample(
            tw, "tokenwatch_kernel_drops_total", reason="proc_table_update_failed") or 0
        self.assertEqual(int(f.get("count", 0)), int(ring_full + update_failed), f)
        self.assertGreaterEqual(sample(tw, "tokenwatch_findings_total", rule="TW090"), 1)


class Readiness(unittest.TestCase):
    def test_readyz_follows_the_probes_and_the_kubelet_root(self):
        simnode.install_signal_handlers()
        node = simnode.SimNode(prefix="tokenwatch-ready-")
        self.addCleanup(node.close)
        node.add_pod("payments", "payments-api-7d9c8", "payments-api")
        tw = simnode.Tokenwatch(node, BIN_DIR)
        tw.agent = tw._spawn(tw.agent_argv(), tw.agent_log, "agent")
        url = "http://%s/readyz" % tw.metrics_addr
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            self.assertIsNone(tw.agent.poll(), tw.agent_stderr()[-2000:])
            status, body = get(url)
            if status is not None and (not seen or seen[-1] != (status, body)):
                seen.append((status, body))
            if status == 200:
                break
            time.sleep(0.005)
        self.assertEqual(seen[-1][0], 200, seen)
        self.assertIn((503, "probes not attached\n"), seen,
                      "no 503 seen while the probes loaded: %s" % seen)

        # The kubelet root goes away: not ready, with the reason; back: ready.
        moved = node.kubelet_root + ".moved"
        os.rename(node.kubelet_root, moved)
        try:
            status, body = wait_until("503 without the kubelet root", lambda: (
                lambda r: r if r[0] == 503 else None)(get(url)))
            self.assertIn("token inventory unreadable", body)
            self.assertIn(node.kubelet_root, body)
            self.assertEqual(tw.metric_value("tokenwatch_ready"), 0)
        finally:
            os.rename(moved, node.kubelet_root)
        wait_until("200 with the kubelet root back", lambda: simnode.http_get(url)[0] == 200)
        self.assertEqual(tw.metric_value("tokenwatch_ready"), 1)


if __name__ == "__main__":
    base.main()
