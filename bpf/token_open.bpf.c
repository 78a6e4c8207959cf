// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * token_open: report every open of a watched token file.
 *
 * The agent loads the (device, inode) of every token file on the node into
 * the tokens map. Matching the opened struct file rather than the path
 * means every spelling of the path (symlinks, ..data, /proc/<pid>/root,
 * relative paths, openat with a dirfd, host paths under the kubelet root)
 * hits the same entry.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "tokenwatch/token_open.h"
#include "task.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* set by the agent before load */
const volatile __u32 self_tgid = 0; /* the agent's own reads are not events */
const volatile __u64 wakeup_bytes = 64 * 1024; /* wake the reader past this */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tw_file_id);
	__type(value, __u8);
} tokens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TW_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stats__inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

/*
 * Wake user space only once a batch has built up; it also polls with a
 * short timeout, so a lone record waits at most one poll period.
 */
static __always_inline __u64 ring__flags(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit_if_token(long ret, __u32 syscall)
{
	struct task_struct *task;
	struct tw_token_open *e;
	struct tw_file_id id = {};
	struct file *file;
	struct mm_struct *mm;
	unsigned long arg_start, arg_end, len;
	__u64 id_tgid, uid_gid;

	if (ret < 0)
		return;
	id_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(id_tgid >> 32) == self_tgid)
		return;

	/* resolve the new fd to its file and look the inode up */
	task = bpf_get_current_task_btf();
	file = task__file(task, ret);
	if (!file) {
		stats__inc(TW_STAT_FD_UNRESOLVED);
		return;
	}
	id.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	id.ino = BPF_CORE_READ(file, f_inode, i_ino);
	if (!bpf_map_lookup_elem(&tokens, &id))
		return;
	stats__inc(TW_STAT_TOKEN_OPENS);

	/* reserve; a full ring is counted, never fatal */
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stats__inc(TW_STAT_RING_FULL);
		return;
	}

	/* fill */
	e->hdr.type = TW_EVENT_TOKEN_OPEN;
	e->hdr.size = sizeof(*e);
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->tgid = id_tgid >> 32;
	e->pid = (__u32)id_tgid;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	uid_gid = bpf_get_current_uid_gid();
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->flags = BPF_CORE_READ(file, f_flags);
	e->syscall = syscall;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->start_boottime_ns = task__start_boottime(task);
	e->file = id;
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	/* the binary's name and the head of argv, while the process exists */
	mm = BPF_CORE_READ(task, mm);
	e->exe_name[0] = '\0';
	bpf_probe_read_kernel_str(e->exe_name, sizeof(e->exe_name),
				  BPF_CORE_READ(mm, exe_file, f_path.dentry, d_name.name));
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	len = arg_end - arg_start;
	if (len > TW_ARGV_LEN)
		len = TW_ARGV_LEN;
	e->argv_len = 0;
	/* the mask keeps the verifier sure of the bound */
	len &= (TW_ARGV_LEN << 1) - 1;
	if (len && len <= TW_ARGV_LEN &&
	    !bpf_probe_read_user(e->argv, len, (void *)arg_start))
		e->argv_len = len;

	/* submit */
	bpf_ringbuf_submit(e, ring__flags());
}

/*
 * The exit of each open system call: the fd exists and points at the file
 * the kernel really opened, whatever path led there.
 */
SEC("tracepoint/syscalls/sys_exit_openat")
int handle_sys_exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	emit_if_token(ctx->ret, TW_SYSCALL_OPENAT);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int handle_sys_exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	emit_if_token(ctx->ret, TW_SYSCALL_OPENAT2);
	return 0;
}

/* open(2) does not exist on arm64; the agent skips it where absent */
SEC("tracepoint/syscalls/sys_exit_open")
int handle_sys_exit_open(struct trace_event_raw_sys_exit *ctx)
{
	emit_if_token(ctx->ret, TW_SYSCALL_OPEN);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_open_by_handle_at")
int handle_sys_exit_open_by_handle_at(struct trace_event_raw_sys_exit *ctx)
{
	emit_if_token(ctx->ret, TW_SYSCALL_OPEN_BY_HANDLE_AT);
	return 0;
}
