#!/bin/sh
# Checks deploy/Dockerfile without a Docker engine: every package a stage installs exists in
# Debian 12 (apt-cache show), the build stage installs only packages deploy/packages.txt
# lists, and each runtime stage installs the package of every shared library its binaries
# link against (ldd on the binaries built here, dpkg -S for the owning package).
# Usage: check_dockerfile.sh SOURCE_DIR AGENT_BINARY COLLECTOR_BINARY CTL_BINARY
set -eu
src="$1"
agent_bin="$2"
collector_bin="$3"
ctl_bin="$4"
dockerfile="$src/deploy/Dockerfile"
status=0

# Prints "<stage> <package>" for every package of every apt-get install in the Dockerfile.
packages() {
	awk '
		/^FROM / { stage = $NF }
		{
			start = 0
			if (!collecting) {
				for (i = 1; i <= NF; i++) if ($i == "install" && $(i - 1) == "apt-get") start = i + 1
				if (start == 0) next
				collecting = 1
			} else {
				start = 1
			}
			for (i = start; i <= NF; i++) {
				if ($i == "&&") { collecting = 0; break }
				if ($i ~ /^[a-z0-9][a-z0-9.+-]+$/) print stage, $i
			}
			if ($NF != "\\") collecting = 0
		}
	' "$dockerfile"
}

list="$(mktemp)"
packages >"$list"
for stage in build agent collector; do
	if ! grep -q "^$stage " "$list"; then
		echo "FAIL: stage '$stage' installs no packages (or is missing)"
		status=1
	fi
done

tmp="$list.d"
mkdir -p "$tmp"
trap 'rm -rf "$list" "$tmp"' EXIT

# One apt-cache call for all packages (one per package takes minutes on a busy machine).
apt-cache show --no-all-versions $(awk '{ print $2 }' "$list" | sort -u) 2>/dev/null |
	awk '/^Package:/ { print $2 }' >"$tmp/found"
grep -v '^#' "$src/deploy/packages.txt" >"$tmp/packages.txt"
if ! awk -v found="$tmp/found" -v listed="$tmp/packages.txt" '
	BEGIN {
		while ((getline p < found) > 0) ok[p] = 1
		while ((getline p < listed) > 0) inlist[p] = 1
	}
	!($2 in ok) { print "FAIL: " $1 " installs \047" $2 "\047, which Debian does not have"; bad = 1 }
	$1 == "build" && !($2 in inlist) {
		print "FAIL: the build stage installs \047" $2 "\047, which deploy/packages.txt does not list"
		bad = 1
	}
	END { exit bad }
' "$list"; then
	status=1
fi

# Each runtime stage installs the package of every library its binaries link against, except
# those debian:bookworm-slim already has.
check_links() {
	stage="$1"
	shift
	: >"$tmp/libs"
	for bin in "$@"; do
		if [ ! -x "$bin" ]; then
			echo "FAIL: $bin is not built"
			status=1
			continue
		fi
		ldd "$bin" | awk '/=>/ { print $3 }' >>"$tmp/libs"
	done
	[ -s "$tmp/libs" ] || return 0
	sort -u "$tmp/libs" | xargs readlink -f | sort -u >"$tmp/real"
	# One dpkg -S call, by multiarch directory and file name: the path may differ from the
	# one dpkg recorded (/lib vs /usr/lib).
	dpkg -S $(sed 's#^.*/\([^/]*/[^/]*\)$#*/\1#' "$tmp/real") >"$tmp/owners" 2>/dev/null || true
	if ! awk -v stage="$stage" -v owners="$tmp/owners" -v list="$list" '
		BEGIN {
			split("libc6 libgcc-s1 libstdc++6 zlib1g", base, " ")
			for (i in base) have[base[i]] = 1
			while ((getline line < list) > 0) {
				split(line, f, " ")
				if (f[1] == stage) have[f[2]] = 1
			}
			# "pkg:arch: /path" (or "pkg1:arch, pkg2:arch: /path")
			while ((getline line < owners) > 0) {
				path = line
				sub(/^.*: /, "", path)
				pkg = line
				sub(/[:,].*$/, "", pkg)
				n = split(path, parts, "/")
				owner[parts[n - 1] "/" parts[n]] = pkg
			}
		}
		{
			n = split($0, parts, "/")
			key = parts[n - 1] "/" parts[n]
			if (!(key in owner)) { print "FAIL: no Debian package owns " $0; bad = 1 }
			else if (!(owner[key] in have)) {
				print "FAIL: stage \047" stage "\047 needs " $0 " from " owner[key] ", which it does not install"
				bad = 1
			}
		}
		END { exit bad }
	' "$tmp/real"; then
		status=1
	fi
}
check_links agent "$agent_bin"
check_links collector "$collector_bin" "$ctl_bin"

for want in "COPY --from=build /src/build/bin/tokenwatch-agent /usr/bin/tokenwatch-agent" \
	"COPY --from=build /src/build/bin/tokenwatch-collector /usr/bin/tokenwatch-collector" \
	"COPY --from=build /src/build/bin/tokenwatchctl /usr/bin/tokenwatchctl" \
	"USER 65532:65532"; do
	if ! grep -qxF "$want" "$dockerfile"; then
		echo "FAIL: the Dockerfile lacks: $want"
		status=1
	fi
done
[ "$status" = 0 ] && echo "ok: $(wc -l <"$list") packages checked"
exit "$status"
