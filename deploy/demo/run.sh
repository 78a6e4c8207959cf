#!/bin/sh
# Builds tokenwatch (installing missing Debian packages) and runs the demo on a
# simulated node. Usage, as root: deploy/demo/run.sh
set -eu
cd "$(dirname "$0")/../.."
deploy/build.sh
exec /usr/bin/python3 deploy/demo/demo.py --build-dir "${BUILD_DIR:-build}"
