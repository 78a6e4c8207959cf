/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The token-open record and the maps every token hook shares: the tokens
 * map of watched (device, inode), the events ring, the per-CPU counters.
 * token_open.bpf.c (tracepoints, io_uring) and token_open_lsm.bpf.c (LSM,
 * fentry) include this, so each hook only finds the struct file and says how
 * it was opened; building and submitting the record is written once.
 */
#ifndef TOKENWATCH_TOKEN_RECORD_BPF_H
#define TOKENWATCH_TOKEN_RECORD_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "tokenwatch/token_open.h"
#include "lineage.bpf.h"
#include "task.bpf.h"

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
 * The kernel's own policy wakes the reader for the first record after it
 * has caught up and not again while it is behind: one wake-up per batch
 * under load, no wait for a lone record. Past wakeup_bytes, wake it anyway.
 */
static __always_inline __u64 ring__flags(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return 0;
}

/* the watched token this file is, or 0 */
static __always_inline int token__match(struct file *file, struct tw_file_id *id)
{
	if (!file)
		return 0;
	id->dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	id->ino = BPF_CORE_READ(file, f_inode, i_ino);
	return bpf_map_lookup_elem(&tokens, id) != NULL;
}

/*
 * Emit the record for an open of the watched token id by the current task:
 * the open itself, the reader and its ancestors from the process table.
 * Callers have matched the file already (token__match).
 */
static __always_inline void token_record__emit(struct task_struct *task, struct file *file,
					       const struct tw_file_id *id, __u32 syscall,
					       __u16 access, __u16 hook)
{
	struct tw_token_open *e;
	__u64 id_tgid, size;
	__u32 zero = 0, n;

	id_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(id_tgid >> 32) == self_tgid)
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
	e->access = access;
	e->hook = hook;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->file = *id;

	/* the reader and its ancestors, from the process table */
	n = lineage__fill(task, &e->reader, e->ancestors, &e->truncated, &e->reader_known);
	if (!e->reader_known)
		stats__inc(TW_STAT_PROC_MISSING);
	e->n_ancestors = n;

	/* submit only what is used; a full ring is counted, never fatal */
	size = TW_TOKEN_OPEN_FIXED_SIZE + (__u64)n * sizeof(struct tw_proc);
	if (size > sizeof(*e))
		size = sizeof(*e);
	e->hdr.size = size;
	if (bpf_ringbuf_output(&events, e, size, ring__flags()))
		stats__inc(TW_STAT_RING_FULL);
}

#endif /* TOKENWATCH_TOKEN_RECORD_BPF_H */
