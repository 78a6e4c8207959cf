// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * token_open: report every open of a watched token file, with the reader's
 * lineage as it is at that moment.
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
#include "procs.bpf.h"
#include "path.bpf.h"
#include "task.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* set by the agent before load */
const volatile __u32 self_tgid = 0; /* the agent's own reads are not events */
const volatile __u64 wakeup_bytes = 64 * 1024; /* wake the reader past this */
const volatile __u32 max_depth = TW_MAX_ANCESTORS; /* ancestors to carry */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tw_file_id);
	__type(value, __u8);
} tokens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TW_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* records are far larger than the BPF stack: build them here */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_token_open);
} record_scratch SEC(".maps");

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

/* the reader when the process table does not know it (evicted) */
static __always_inline void reader__from_task(struct tw_proc *r, struct task_struct *task)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long arg_start, arg_end, len;
	long n;

	proc__fill_from_task(r, task);
	proc__key(BPF_CORE_READ(task, real_parent), &r->parent);
	r->cgroup_id = bpf_get_current_cgroup_id();
	r->flags = 0;
	r->exit_ns = 0;
	n = path__of_file(task, BPF_CORE_READ(mm, exe_file), r->exe);
	if (n < 0) {
		r->flags |= TW_PROC_EXE_CUT;
		n = 0;
	}
	r->exe_len = n;
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	len = arg_end - arg_start;
	if (len > argv_max)
		len = argv_max;
	len &= (TW_ARGV_LEN << 1) - 1;
	r->argv_len = 0;
	if (len && len <= TW_ARGV_LEN && !bpf_probe_read_user(r->argv, len, (void *)arg_start))
		r->argv_len = len;
}

static __always_inline void emit_if_token(long ret, __u32 syscall)
{
	struct task_struct *task;
	struct tw_token_open *e;
	struct tw_file_id id = {};
	struct tw_proc_key key;
	struct tw_proc *p;
	struct file *file;
	__u64 id_tgid, size;
	__u32 zero = 0, i, n = 0;

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

	e = bpf_map_lookup_elem(&record_scratch, &zero);
	if (!e)
		return;

	/* fill the open itself */
	e->hdr.type = TW_EVENT_TOKEN_OPEN;
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->tgid = id_tgid >> 32;
	e->pid = (__u32)id_tgid;
	e->flags = BPF_CORE_READ(file, f_flags);
	e->syscall = syscall;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->file = id;
	e->truncated = 0;

	/* the reader, from the process table when it knows it */
	proc__key(task, &key);
	p = proc__lookup(&key);
	if (p) {
		bpf_probe_read_kernel(&e->reader, sizeof(e->reader), p);
		e->reader_known = 1;
	} else {
		reader__from_task(&e->reader, task);
		e->reader_known = 0;
		stats__inc(TW_STAT_PROC_MISSING);
	}

	/* the ancestors, following the parents recorded at fork */
	key = e->reader.parent;
	for (i = 0; i < TW_MAX_ANCESTORS; i++) {
		if (i >= max_depth || key.tgid == 0)
			break;
		p = proc__lookup(&key);
		if (!p)
			break;
		bpf_probe_read_kernel(&e->ancestors[i], sizeof(e->ancestors[i]), p);
		key = p->parent;
		n = i + 1;
	}
	if (n >= max_depth && key.tgid != 0)
		e->truncated = 1;
	e->n_ancestors = n;

	/* submit only what is used; a full ring is counted, never fatal */
	size = TW_TOKEN_OPEN_FIXED_SIZE + (__u64)n * sizeof(struct tw_proc);
	if (size > sizeof(*e))
		size = sizeof(*e);
	e->hdr.size = size;
	if (bpf_ringbuf_output(&events, e, size, ring__flags()))
		stats__inc(TW_STAT_RING_FULL);
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
