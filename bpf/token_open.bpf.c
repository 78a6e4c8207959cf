// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * token_open: report every open of a watched token file, with the reader's
 * lineage as it is at that moment. This object holds the tracepoint hooks:
 * the open system calls' exits (tracepoint mode) and io_uring's completion
 * (tracepoint and fanotify modes). token_open_lsm.bpf.c holds the LSM and
 * fentry hooks; both build the record in lib/token_record.bpf.h.
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

#include "token_record.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* io_uring's "allocate a free slot" file index (IORING_FILE_INDEX_ALLOC) */
#define TW_IORING_FILE_INDEX_ALLOC (~0U)
/* low bits of a fixed-file pointer carry flags (FFS_NOWAIT, FFS_ISREG) */
#define TW_IORING_FFS_MASK (~7UL)

/* fixed-file table before 6.13, which moved it to io_rsrc_node entries */
struct io_fixed_file___old {
	unsigned long file_ptr;
};
struct io_file_table___old {
	struct io_fixed_file___old *files;
};
struct io_ring_ctx___old {
	struct io_file_table___old file_table;
};

static __always_inline void emit_if_token(long ret, __u32 syscall)
{
	struct task_struct *task;
	struct tw_file_id id = {};
	struct file *file;

	if (ret < 0)
		return;
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) == self_tgid)
		return;

	/* resolve the new fd to its file and look the inode up */
	task = bpf_get_current_task_btf();
	file = task__file(task, ret);
	if (!file) {
		stats__inc(TW_STAT_FD_UNRESOLVED);
		return;
	}
	if (!token__match(file, &id))
		return;
	token_record__emit(task, file, &id, syscall, TW_ACCESS_SYSCALL, TW_HOOK_TRACEPOINT);
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

/* the file in slot idx of the ring's fixed-file table, or NULL */
static __always_inline struct file *io_uring__fixed_file(void *ring, __u32 idx)
{
	struct io_ring_ctx___old *old = ring;
	struct io_ring_ctx *ctx = ring;
	struct io_rsrc_node *node = NULL;
	struct io_rsrc_node **nodes;
	unsigned long ptr = 0;

	if (bpf_core_field_exists(old->file_table.files)) {
		struct io_fixed_file___old *files = BPF_CORE_READ(old, file_table.files);

		if (bpf_probe_read_kernel(&ptr, sizeof(ptr), &files[idx].file_ptr))
			return NULL;
	} else {
		if (idx >= BPF_CORE_READ(ctx, file_table.data.nr))
			return NULL;
		nodes = BPF_CORE_READ(ctx, file_table.data.nodes);
		if (bpf_probe_read_kernel(&node, sizeof(node), &nodes[idx]) || !node)
			return NULL;
		ptr = BPF_CORE_READ(node, file_ptr);
	}
	return (struct file *)(ptr & TW_IORING_FFS_MASK);
}

/*
 * io_uring opens never pass the open system calls: the request runs in the
 * submitter's io_uring_enter, an io-wq worker or the SQPOLL thread. Its
 * completion is the one place every IORING_OP_OPENAT/OPENAT2 passes with
 * the result known, and it costs nothing to processes that do not use
 * io_uring. The result is an fd in the submitter's table (io-wq workers and
 * the SQPOLL thread share it) or, for a direct descriptor, a fixed-file slot.
 */
SEC("tracepoint/io_uring/io_uring_complete")
int handle_io_uring_complete(struct trace_event_raw_io_uring_complete *ctx)
{
	struct io_kiocb *req = ctx->req;
	struct io_open *open = (struct io_open *)req; /* the request's command data */
	struct task_struct *task;
	struct tw_file_id id = {};
	struct file *file;
	__u32 syscall, slot;
	__u8 op;
	int res = ctx->res;

	if (res < 0)
		return 0;
	op = BPF_CORE_READ(req, opcode);
	if (op == IORING_OP_OPENAT)
		syscall = TW_SYSCALL_IO_URING_OPENAT;
	else if (op == IORING_OP_OPENAT2)
		syscall = TW_SYSCALL_IO_URING_OPENAT2;
	else
		return 0;
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) == self_tgid)
		return 0;

	/* an fd, or a direct descriptor: the slot asked for, or the one allocated */
	task = bpf_get_current_task_btf();
	slot = BPF_CORE_READ(open, file_slot);
	if (slot == 0)
		file = task__file(task, res);
	else if (slot == TW_IORING_FILE_INDEX_ALLOC)
		file = io_uring__fixed_file(ctx->ctx, res);
	else
		file = io_uring__fixed_file(ctx->ctx, slot - 1);
	if (!file) {
		stats__inc(TW_STAT_FD_UNRESOLVED);
		return 0;
	}
	if (!token__match(file, &id))
		return 0;
	token_record__emit(task, file, &id, syscall, TW_ACCESS_IO_URING, TW_HOOK_TRACEPOINT);
	return 0;
}
