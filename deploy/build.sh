#!/bin/sh
# Installs the Debian packages tokenwatch needs (those not yet installed),
# then configures and builds everything into ${BUILD_DIR:-build}.
# Usage: deploy/build.sh   (as root on Debian 12)
set -eu
cd "$(dirname "$0")/.."
build_dir="${BUILD_DIR:-build}"

missing=""
for pkg in $(grep -v '^#' deploy/packages.txt); do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $pkg"
	fi
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing
fi

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j "$(nproc)"
