#!/usr/bin/python3
"""Every tokenwatch_ metric the alerting rules, the Grafana dashboard and the
README's metrics table name exists in the agent's or the collector's
exposition, and every exported metric is in the README table: dashboards and
alerts that query a renamed metric go silent without an error.

Usage: check_references.py AGENT.prom COLLECTOR.prom RULES.yaml DASHBOARD.json README.md
"""
import re
import sys

NAME = re.compile(r"\btokenwatch_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def families(path):
    out = set()
    for line in open(path):
        m = re.match(r"# TYPE (\S+) ", line)
        if m:
            out.add(m.group(1))
    return out


def base(name):
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def main():
    agent, collector, rules, dashboard, readme = sys.argv[1:6]
    exported = families(agent) | families(collector)
    problems = []
    for path in (rules, dashboard, readme):
        for name in sorted({base(n) for n in NAME.findall(open(path).read())}):
            if name not in exported:
                problems.append("%s names %s, which neither endpoint exports" % (path, name))
    documented = {base(n) for n in NAME.findall(open(readme).read())}
    for name in sorted(exported - documented):
        problems.append("%s is exported but not in %s" % (name, readme))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
