#!/usr/bin/python3
"""The hook modes on a second, real kernel (issue #9).

The development and CI machines run one kernel, which refuses BPF-LSM and
fentry programs. This test boots Debian's own kernel package
(linux-image-amd64: `apt-get download`, `dpkg -x`) under qemu-system-x86_64
with software emulation (no KVM here) and `lsm=...,bpf` on its command line,
from an initramfs it builds: busybox-static, the agent and the collector with
the shared libraries ldd lists, a tmpfs kubelet directory holding a pod's
projected token (a made-up JWT, never a real one), and five static openers:

  cat (busybox), openat2, io_uring openat, open_by_handle_at, and a 32-bit
  compat openat (int $0x80, tests/vm/compat_openat.S).

Inside, /init runs the agent in lsm mode and then in fentry mode, lets each
opener open the token once, and prints the agent's findings (JSON lines) on
the serial console between markers. This side boots it, bounded in time, and
asserts: each mode started as asked and reported its mode, and each of the
five opens yielded a finding in each mode, saying how it was opened.

Usage (root): python3 tests/vm/run_vm_test.py [--work-dir DIR] [--timeout S]
Exit status 77: skipped (prerequisites missing and TOKENWATCH_REQUIRE_BPF is
not 1). With TOKENWATCH_REQUIRE_BPF=1 (CI) a missing prerequisite (qemu, the
kernel package, a compiler) is a failure that names it, never a skip.
"""

import argparse
import glob
import gzip
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("TOKENWATCH_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "deploy", "demo"))
import simnode  # noqa: E402  (token maker, binary lookup)

BIN_DIR = os.environ.get("TOKENWATCH_BIN_DIR") or os.path.join(SOURCE_DIR, "build", "bin")
REQUIRE = os.environ.get("TOKENWATCH_REQUIRE_BPF") == "1"
MODES = ("lsm", "fentry")
POD_UID = str(uuid.UUID("3f1c2a9e-7b4d-4e8f-9a60-1c2d3e4f5a6b"))
VOLUME = "kube-api-access-vm"
KUBELET = "/var/lib/kubelet"
TOKEN_IN_VM = "%s/pods/%s/volumes/kubernetes.io~projected/%s/token" % (KUBELET, POD_UID, VOLUME)

# opener name in the VM -> (argv after the binary, syscall text, rule)
OPENERS = {
    "busybox.cat": (["cat", TOKEN_IN_VM], ("openat", "open"), "TW003"),
    "openat2_read": ([TOKEN_IN_VM], ("openat2",), "TW003"),
    "uring_read": ([TOKEN_IN_VM], None, "TW005"),
    "handle_read": ([TOKEN_IN_VM], ("open_by_handle_at",), "TW003"),
    "compat_openat": ([TOKEN_IN_VM], ("openat (32-bit compat)",), "TW003"),
}


def give_up(reason):
    print("%s: %s" % ("FAIL (TOKENWATCH_REQUIRE_BPF=1)" if REQUIRE else "SKIP", reason),
          flush=True)
    sys.exit(1 if REQUIRE else 77)


def run(argv, **kw):
    kw.setdefault("timeout", 300)
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (" ".join(argv), res.returncode,
                                                 (res.stderr or res.stdout)[-2000:]))
    return res.stdout


# ---------------------------------------------------------------------------
# Prerequisites and the kernel


def prerequisites():
    missing = []
    if os.geteuid() != 0:
        missing.append("not root")
    for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("apt-get", "apt"),
                      ("dpkg", "dpkg"), ("gcc", "gcc"), ("as", "binutils"), ("ld", "binutils"),
                      ("ldd", "libc-bin")):
        if shutil.which(tool) is None:
            missing.append("%s not found (Debian package %s)" % (tool, pkg))
    if not os.path.exists("/bin/busybox"):
        missing.append("/bin/busybox not found (busybox-static)")
    if not os.path.exists("/usr/include/liburing.h"):
        missing.append("liburing.h not found (liburing-dev)")
    bins = {}
    for name, env in (("tokenwatch-agent", "TOKENWATCH_AGENT"),
                      ("tokenwatch-collector", "TOKENWATCH_COLLECTOR")):
        path = simnode.find_binary(BIN_DIR, name, env)
        if path is None:
            missing.append("%s not found (TOKENWATCH_BIN_DIR=%s)" % (name, BIN_DIR))
        bins[name] = path
    return missing, bins


def fetch_kernel(work):
    """vmlinuz of Debian's current linux-image-amd64, cached under work/kernel."""
    kdir = os.path.join(work, "kernel")
    found = sorted(glob.glob(os.path.join(kdir, "root", "boot", "vmlinuz-*")))
    if found:
        return found[-1]
    os.makedirs(kdir, exist_ok=True)
    # The metapackage names the versioned image it depends on.
    deps = run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends:\s*(linux-image-\S+)", deps)
    if not m:
        raise RuntimeError("apt-cache depends linux-image-amd64 names no image: " + deps)
    image = m.group(1)
    if not glob.glob(os.path.join(kdir, image + "_*.deb")):
        run(["apt-get", "download", image], cwd=kdir, timeout=600)
    deb = sorted(glob.glob(os.path.join(kdir, image + "_*.deb")))[-1]
    run(["dpkg", "-x", deb, os.path.join(kdir, "root")], timeout=600)
    found = sorted(glob.glob(os.path.join(kdir, "root", "boot", "vmlinuz-*")))
    if not found:
        raise RuntimeError("%s holds no boot/vmlinuz-*" % deb)
    return found[-1]


# ---------------------------------------------------------------------------
# The initramfs


class Cpio:
    """A newc-format cpio archive, written without the cpio tool."""

    def __init__(self):
        self.out = bytearray()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name_b), 0]
        self.ino += 1
        self.out += b"070701" + b"".join(b"%08X" % f for f in fields) + name_b
        self.out += b"\0" * (-(110 + len(name_b)) % 4)
        self.out += data + b"\0" * (-len(data) % 4)

    def add_tree(self, root):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            if rel != ".":
                self._entry(rel, stat.S_IFDIR | 0o755)
            for name in sorted(filenames) + [d for d in dirnames
                                             if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                arc = os.path.normpath(os.path.join(rel, name))
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    self._entry(arc, stat.S_IFLNK | 0o777, os.readlink(path).encode())
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        self._entry(arc, stat.S_IFREG | (st.st_mode & 0o7777), f.read())

    def add_device(self, name, major, minor):
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return bytes(self.out)


def copy_with_libs(binary, tree, dest):
    """binary at dest in tree, plus every shared library ldd lists, at the
    same paths (the loader included)."""
    target = os.path.join(tree, dest.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(binary, target)
    for line in run(["ldd", binary]).splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if not m:
            continue
        lib = m.group(1)
        out = os.path.join(tree, lib.lstrip("/"))
        if not os.path.exists(out):
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), out)


def build_helpers(work):
    out = os.path.join(work, "helpers")
    os.makedirs(out, exist_ok=True)
    e2e = os.path.join(SOURCE_DIR, "tests", "e2e")
    for name, src, libs in (("openat2_read", "openat2_read.c", []),
                            ("handle_read", "handle_read.c", []),
                            ("uring_read", "uring_read.c", ["-luring"])):
        run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", os.path.join(out, name),
             os.path.join(e2e, src)] + libs)
    obj = os.path.join(out, "compat_openat.o")
    run(["as", "--32", "-o", obj, os.path.join(HERE, "compat_openat.S")])
    run(["ld", "-m", "elf_i386", "-o", os.path.join(out, "compat_openat"), obj])
    return out


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmp /tmp
mount -t tmpfs kubelet /var/lib/kubelet
cp -a /kubelet-src/. /var/lib/kubelet/
ip link set lo up
echo "TWVM-BOOTED $(uname -r)"
/opt/tw/tokenwatch-collector --listen 127.0.0.1:7443 --db /tmp/collector.db \
  >/tmp/collector.log 2>&1 &
for mode in lsm fentry; do
  /opt/tw/tokenwatch-agent --kubelet-root /var/lib/kubelet --node-name vm \
    --findings-out /tmp/findings-$mode.jsonl --metrics-address 127.0.0.1:9750 \
    --state-dir /tmp/state-$mode --collector 127.0.0.1:7443 --hook-mode $mode \
    >/tmp/agent-$mode.log 2>&1 &
  agent=$!
  i=0
  while [ $i -lt 240 ] && kill -0 $agent 2>/dev/null && \
        ! grep -q "tokens watched" /tmp/agent-$mode.log; do
    sleep 0.5; i=$((i + 1))
  done
  echo "TWVM-MODE $mode $(grep -o 'hook mode [a-z]* ([^)]*)' /tmp/agent-$mode.log | head -n 1)"
  if kill -0 $agent 2>/dev/null; then
    cd /tmp
    /opt/tw/busybox.cat cat @TOKEN@ >/dev/null
    /opt/tw/openat2_read @TOKEN@ >/dev/null
    /opt/tw/uring_read @TOKEN@ >/dev/null
    /opt/tw/handle_read @TOKEN@ >/dev/null
    /opt/tw/compat_openat @TOKEN@ >/dev/null || echo "TWVM-NOTE compat_openat failed"
    cd /
    sleep 4
    kill $agent
    wait $agent
  fi
  echo "TWVM-FINDINGS-BEGIN $mode"
  cat /tmp/findings-$mode.jsonl 2>/dev/null
  echo "TWVM-FINDINGS-END $mode"
  echo "TWVM-LOG-BEGIN $mode"
  tail -n 30 /tmp/agent-$mode.log
  echo "TWVM-LOG-END $mode"
done
echo "TWVM-DONE"
poweroff -f
"""


def build_initramfs(work, bins, helpers):
    tree = os.path.join(work, "initramfs")
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "tmp", "opt/tw", "var/lib/kubelet", "etc"):
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(tree, "bin", "busybox"))
    shutil.copy2("/bin/busybox", os.path.join(tree, "opt", "tw", "busybox.cat"))
    copy_with_libs(bins["tokenwatch-agent"], tree, "/opt/tw/tokenwatch-agent")
    copy_with_libs(bins["tokenwatch-collector"], tree, "/opt/tw/tokenwatch-collector")
    for name in ("openat2_read", "handle_read", "uring_read", "compat_openat"):
        shutil.copy2(os.path.join(helpers, name), os.path.join(tree, "opt", "tw", name))
    # The kubelet's projected volume, written the way its atomic writer does.
    vol = os.path.join(tree, "kubelet-src", "pods", POD_UID, "volumes",
                       "kubernetes.io~projected", VOLUME)
    data = os.path.join(vol, "..2026_01_01_00_00_00.000000001")
    os.makedirs(data)
    with open(os.path.join(data, "token"), "w") as f:
        f.write(simnode.make_projected_token("shop", "vm-pod-0", POD_UID, "vm-sa",
                                             str(uuid.uuid4()), lifetime=24 * 3600))
    os.symlink(os.path.basename(data), os.path.join(vol, "..data"))
    os.symlink("..data/token", os.path.join(vol, "token"))
    with open(os.path.join(tree, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/bin/sh\n")
    with open(os.path.join(tree, "init"), "w") as f:
        f.write(INIT.replace("@TOKEN@", TOKEN_IN_VM))
    os.chmod(os.path.join(tree, "init"), 0o755)
    archive = Cpio()
    archive.add_device("dev/console", 5, 1)
    archive.add_tree(tree)
    path = os.path.join(work, "initramfs.cpio.gz")
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(archive.finish())
    return path


# ---------------------------------------------------------------------------
# Boot and check


def boot(work, kernel, initrd, timeout):
    serial = os.path.join(work, "serial.log")
    argv = ["qemu-system-x86_64", "-m", "2048", "-smp", "2", "-nographic", "-no-reboot",
            "-cpu", "max", "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyS0 rdinit=/init panic=-1 lsm=lockdown,yama,bpf loglevel=4"]
    print("booting: " + " ".join(argv), flush=True)
    start = time.monotonic()
    with open(serial, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print("qemu killed after %d s" % timeout, flush=True)
    print("qemu ran %.0f s" % (time.monotonic() - start), flush=True)
    with open(serial, "rb") as f:
        return f.read().decode(errors="replace").replace("\r", "")


def section(text, name, mode):
    m = re.search(r"TWVM-%s-BEGIN %s\n(.*?)TWVM-%s-END %s" % (name, mode, name, mode), text,
                  re.S)
    return m.group(1) if m else None


def check(text):
    """Failures, one line each (empty: passed)."""
    failures = []
    if "TWVM-BOOTED" not in text:
        return ["the VM never reached /init (see the serial log)"]
    if "TWVM-DONE" not in text:
        failures.append("the VM did not finish /init within the time bound")
    for mode in MODES:
        m = re.search(r"TWVM-MODE %s (.*)" % mode, text)
        reported = m.group(1) if m else ""
        if not reported.startswith("hook mode %s " % mode):
            log = section(text, "LOG", mode) or ""
            failures.append("%s: the agent did not start in %s mode (reported %r); log tail:\n%s"
                            % (mode, mode, reported, log[-1500:]))
            continue
        findings = []
        for line in (section(text, "FINDINGS", mode) or "").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    findings.append(json.loads(line))
                except ValueError:
                    failures.append("%s: a findings line is not JSON: %s" % (mode, line[:120]))
        for opener, (_, syscalls, rule) in OPENERS.items():
            mine = [f for f in findings
                    if (f.get("process") or {}).get("exe", "").endswith("/" + opener)]
            if not mine:
                failures.append("%s: no finding for the %s open" % (mode, opener))
                continue
            f = mine[0]
            access = f.get("access") or {}
            what = "%s: %s: rule %s, hookMode %s, access %s" % (
                mode, opener, f.get("ruleId"), f.get("hookMode"), json.dumps(access))
            print(what, flush=True)
            if f.get("ruleId") != rule or f.get("hookMode") != mode:
                failures.append(what + " (expected rule %s)" % rule)
            if syscalls is None:
                if access.get("path") != "ACCESS_PATH_IO_URING":
                    failures.append(what + " (expected an io_uring access)")
            elif access.get("syscall") not in syscalls:
                failures.append(what + " (expected syscall %s)" % "/".join(syscalls))
            if (f.get("token") or {}).get("owner", {}).get("uid") != POD_UID:
                failures.append(what + " (token owner is not the VM's pod)")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=os.path.join(SOURCE_DIR, "build", "vm"))
    parser.add_argument("--timeout", type=int, default=420,
                        help="seconds for the whole boot and run (default 420)")
    args = parser.parse_args()
    missing, bins = prerequisites()
    if missing:
        give_up("; ".join(missing))
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    try:
        kernel = fetch_kernel(work)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        give_up("cannot get Debian's kernel package: %s" % e)
    print("kernel: " + kernel, flush=True)
    helpers = build_helpers(work)
    initrd = build_initramfs(work, bins, helpers)
    print("initramfs: %s (%d MB)" % (initrd, os.path.getsize(initrd) >> 20), flush=True)
    text = boot(work, kernel, initrd, args.timeout)
    failures = check(text)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), flush=True)
        print("serial log: " + os.path.join(work, "serial.log"), flush=True)
        return 1
    print("PASSED: lsm and fentry modes saw all five ways of opening the token", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
