#!/usr/bin/python3
"""tokenwatch demo: a simulated node, a well-behaved controller, three token
thefts, and the findings they raise.

Usage (as root): python3 deploy/demo/demo.py [--build-dir build]
Everything is torn down at the end, also on Ctrl-C.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simnode  # noqa: E402


def step(msg):
    print("\n==> " + msg, flush=True)


def say(msg):
    print("    " + msg, flush=True)


def redact(text, node):
    """Belt and braces: the demo prints tokenwatch output, which must never hold
    a token; if it ever does, show that instead of the secret."""
    for s in node.secrets_to_scan():
        if s in text:
            text = text.replace(s, "<TOKEN LEAKED BY TOKENWATCH>")
    return text


def run(build_dir):
    bin_dir = os.path.join(os.path.abspath(build_dir), "bin")
    simnode.install_signal_handlers()
    with simnode.SimNode(prefix="tokenwatch-demo-") as node:
        tw = simnode.Tokenwatch(node, bin_dir)
        if tw.missing():
            print("missing in %s: %s (build first: deploy/build.sh)" % (
                bin_dir, ", ".join(tw.missing())), file=sys.stderr)
            return 1

        step("Building a simulated node in %s" % node.tmp)
        victim = node.add_pod("payments", "payments-api-7d9c8", "payments-api")
        app = node.add_container(victim, "api")
        say("pod payments/%s (uid %s)" % (victim.name, victim.uid))
        say("  its token: %s/token in the container," % simnode.SA_MOUNT)
        say("  <tmp>/%s on the node" % os.path.relpath(victim.token_path, node.tmp))
        say("container %s... runs /app/controller, which rereads the token every 200 ms"
            % app.id[:12])
        attacker_pod = node.add_pod("tools", "debug-shell-5f6b4", "default")
        attacker = node.add_attacker_container(attacker_pod)
        say("pod tools/%s mounts the node's kubelet pods dir at /host/kubelet/pods "
            "(a hostPath)" % attacker_pod.name)
        app.wait_entrypoint_reading()

        step("Starting tokenwatch-collector and tokenwatch-agent")
        say("collector listening on %s" % tw.start_collector())
        tw.start_agent()
        say("agent ready (metrics on %s)" % tw.metrics_addr)

        step("Normal life: the controller reads its own token for 3 s")
        before, _ = app.controller_reads()
        time.sleep(3)
        after, _ = app.controller_reads()
        say("%d reads by the entrypoint: expected, so no finding" % (after - before))

        step("Attack 1: an exec session in the pod cats the token (kubectl exec style): TW004")
        out = app.exec(["sh", "-c", "cat %s/token | wc -c" % simnode.SA_MOUNT]).stdout
        say("sh -c 'cat .../token' read %s bytes" % out.strip())

        step("Attack 2: the other pod reads it through its hostPath mount")
        path = node.host_path_in_attacker(victim)
        out = attacker.exec(["sh", "-c", "cat %s | wc -c" % path]).stdout
        say("cat /host/kubelet/pods/<victim uid>/.../token read %s bytes" % out.strip())

        step("Attack 3: a process on the host reads it under the kubelet dir")
        out = simnode.host_run(["sh", "-c", 'cat "$1" | wc -c', "sh", victim.token_path]).stdout
        say("cat <kubelet>/pods/<uid>/volumes/kubernetes.io~projected/.../token read %s bytes"
            % out.strip())

        step("Waiting for the findings to reach the collector")
        wanted = {"TW004", "TW002", "TW003"}
        deadline = time.monotonic() + 30
        seen = set()
        while time.monotonic() < deadline and not wanted <= seen:
            seen = {f.get("ruleId") for f in tw.findings()}
            time.sleep(0.5)
        if not wanted <= seen:
            say("still missing after 30 s: %s" % ", ".join(sorted(wanted - seen)))

        step("tokenwatchctl findings")
        print(redact(tw.ctl("findings"), node), end="", flush=True)

        shell = [f for f in tw.findings() if f.get("ruleId") == "TW004"]
        if shell:
            step("tokenwatchctl finding %s  (who read it, and how they got there)" %
                 shell[0]["id"])
            print(redact(tw.ctl("finding", shell[0]["id"]), node), end="", flush=True)

        step("Cleaning up")
    say("done")
    return 0 if wanted <= seen else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default="build",
                        help="build directory holding bin/ (default: build)")
    args = parser.parse_args()
    try:
        return run(args.build_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    except simnode.SimNodeError as e:
        print("demo failed: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
