#!/bin/sh
# Collector benchmarks: ingest rate and ListFindings latency among 1,000,000 stored findings.
# A script, not a timed test: prints the numbers next to the targets (issue #6: at least 20,000
# findings/s; under 50 ms for the newest 100).
#
#   tests/bench/collector/run.sh [--build-dir DIR] [--findings N] [--stored N]
#
# Builds bench_collector with g++ against the build directory's generated protobuf code
# (default ${BUILD_DIR:-build}; its tw_proto target is built first) and Debian's libraries.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
build_dir="${BUILD_DIR:-$root/build}"
findings=200000
stored=1000000
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir=$2; shift 2 ;;
    --findings) findings=$2; shift 2 ;;
    --stored) stored=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cmake --build "$build_dir" --target tw_proto >/dev/null
gen="$build_dir/proto"
out="$build_dir/bench/bench_collector"
mkdir -p "$(dirname "$out")"
echo "building $out"
# shellcheck disable=SC2046
g++ -std=c++17 -O2 -DNDEBUG -o "$out" -I"$root" -isystem "$gen" \
  "$here/bench_collector.cc" \
  "$root/collector/store.cc" "$root/collector/validate.cc" "$root/collector/ingest.cc" \
  "$root/collector/service.cc" \
  "$gen/tokenwatch/v1/finding.pb.cc" "$gen/tokenwatch/v1/collector.pb.cc" \
  "$gen/tokenwatch/v1/collector.grpc.pb.cc" \
  $(pkg-config --cflags --libs grpc++ protobuf sqlite3 absl_status absl_statusor absl_strings \
      absl_str_format absl_synchronization absl_time) -lpthread
echo "== machine: $(nproc) cores, $(uname -r)"
"$out" ingest --findings "$findings" --streams 4
"$out" list --stored "$stored" --queries 50
