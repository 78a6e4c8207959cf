#!/bin/sh
# tokenwatch benchmark suite: the agent against no monitoring, auditd and a
# bpftrace one-liner, side by side, as ratios (see tests/bench/README.md).
#
# Usage, as root on Debian 12:
#   tests/bench/run.sh [--quick] [--no-build] [--bin-dir DIR] [--reps N] [--budget SECONDS]
#                      [--json-out FILE]
#
#   --quick      the CI smoke version: short loops, 3 repetitions; targets
#                are reported, never enforced
#   --no-build   use the binaries already in --bin-dir (default: run
#                deploy/build.sh first, which is incremental)
#   --bin-dir    where tokenwatch-agent is (default ${BUILD_DIR:-build}/bin)
#   --reps, --budget   repetitions (default 7, quick 2) and the seconds the
#                run may take (default 840, quick 110): on a loaded machine
#                repetitions stop early, never below 2, to stay within it
#   --json-out   the JSON summary (default ${BUILD_DIR:-build}/bench/summary.json,
#                summary-quick.json with --quick)
#
# Installs the benchmark-only Debian packages (auditd, bpftrace) when they are
# missing; a comparison whose tool cannot be installed or cannot run here is
# reported as unavailable, with the reason. Exit status: 0 when the suite ran,
# 1 when the harness or the agent broke, 77 when this machine cannot run it
# (not root, no BPF) unless TOKENWATCH_REQUIRE_BPF=1.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
build_dir="${BUILD_DIR:-build}"
build=yes
quick=no
bin_dir=""
json_out=""
reps=""
budget=""
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) quick=yes ;;
	--no-build) build=no ;;
	--bin-dir) bin_dir="$2"; shift ;;
	--json-out) json_out="$2"; shift ;;
	--reps) reps="$2"; shift ;;
	--budget) budget="$2"; shift ;;
	-h|--help) sed -n '2,24p' "$here/run.sh"; exit 0 ;;
	*) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
[ -n "$bin_dir" ] || bin_dir="$build_dir/bin"
if [ -z "$json_out" ]; then
	if [ "$quick" = yes ]; then
		json_out="$build_dir/bench/summary-quick.json"
	else
		json_out="$build_dir/bench/summary.json"
	fi
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "bench cannot run here: not root"
	[ "${TOKENWATCH_REQUIRE_BPF:-0}" = 1 ] && exit 1
	exit 77
fi

if [ "$build" = yes ]; then
	BUILD_DIR="$build_dir" deploy/build.sh
fi
if [ ! -x "$bin_dir/tokenwatch-agent" ]; then
	echo "run.sh: no tokenwatch-agent in $bin_dir (build first, or drop --no-build)" >&2
	exit 1
fi

# Benchmark-only packages: not in deploy/packages.txt, since nothing else
# needs them. A failed install leaves that column unavailable.
missing=""
for pkg in auditd bpftrace gcc; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $pkg"
	fi
done
if [ -n "$missing" ]; then
	echo "run.sh: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2086
	if ! apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
		apt-get update -qq >/dev/null 2>&1 || true
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 ||
			echo "run.sh: could not install$missing; those comparisons will be unavailable" >&2
	fi
fi

set -- --bin-dir "$bin_dir" --json-out "$json_out"
[ "$quick" = yes ] && set -- "$@" --quick
[ -n "$reps" ] && set -- "$@" --reps "$reps"
[ -n "$budget" ] && set -- "$@" --budget "$budget"
exec /usr/bin/python3 "$here/bench.py" "$@"
