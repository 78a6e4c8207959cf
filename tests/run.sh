#!/bin/sh
# Runs the whole test suite: installs missing Debian packages, builds, and
# runs every test with ctest. Usage, as root: tests/run.sh
# With TOKENWATCH_REQUIRE_BPF=1 (as in CI), a BPF or end-to-end test that
# cannot run here fails instead of skipping.
set -eu
cd "$(dirname "$0")/.."
build_dir="${BUILD_DIR:-build}"
BUILD_DIR="$build_dir" deploy/build.sh
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" "$@"
