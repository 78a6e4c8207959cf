#!/bin/sh
# Collector benchmarks: ingest rate and ListFindings latency among 1,000,000 stored findings,
# both against the real tokenwatch-collector binary over loopback gRPC. A script, not a timed
# test: prints the numbers next to the targets (issue #6: at least 20,000 findings/s; under
# 50 ms for the newest 100).
#
#   tests/bench/collector/run.sh [--build-dir DIR] [--findings N] [--stored N] [--reps R]
#                                [--baseline BIN]
#
# Builds the bench_collector and tokenwatch-collector targets of the build directory
# (default ${BUILD_DIR:-build}). --baseline runs a second collector binary (an older build)
# alternately with this one in the same ingest run, for a side-by-side comparison.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
build_dir="${BUILD_DIR:-$root/build}"
findings=200000
stored=1000000
reps=3
baseline=
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir=$2; shift 2 ;;
    --findings) findings=$2; shift 2 ;;
    --stored) stored=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cmake --build "$build_dir" --target bench_collector tokenwatch-collector >/dev/null
bench="$build_dir/bench/bench_collector"
collector="$build_dir/bin/tokenwatch-collector"
echo "== machine: $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$baseline" ]; then
  "$bench" ingest --collector "$collector" --baseline "$baseline" --findings "$findings" \
    --streams 4 --reps "$reps"
else
  "$bench" ingest --collector "$collector" --findings "$findings" --streams 4 --reps "$reps"
fi
"$bench" list --collector "$collector" --stored "$stored" --queries 50
