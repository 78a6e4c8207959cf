#!/bin/sh
# Regenerates vmlinux.h for one architecture from a kernel's BTF.
# Usage: bpf/vmlinux/gen.sh [ARCH] [BTF_FILE]
# Defaults: this machine's architecture and /sys/kernel/btf/vmlinux.
# The header is checked in so that the build never depends on the build
# host's kernel; CO-RE relocations adapt the programs at load time.
set -eu
arch="${1:-$(uname -m)}"
btf="${2:-/sys/kernel/btf/vmlinux}"
out="$(dirname "$0")/${arch}/vmlinux.h"
mkdir -p "$(dirname "$out")"
bpftool btf dump file "$btf" format c > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out from $btf ($(wc -l < "$out") lines)"
