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
const volatile __u64 dedup_window_ns = 0; /* 0: every open is a record of its own */

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

/*
 * Repeated opens of one token by one process within the dedup window. The
 * first open of a window is a record; the later ones only count here, so a
 * controller rereading its token every minute costs one record per window,
 * not one per reread. The agent reads the counts back, adds them to the
 * finding, and deletes the entries of processes that have exited (no open
 * can race that). LRU: a burst of new readers evicts old windows (their
 * next open is simply a record again), never the other way round.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tw_reopen_key);
	__type(value, struct tw_reopen);
} reopens SEC(".maps");

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
 * Whether this open only repeats one already reported in its window: then
 * it is counted and no record is made. Otherwise the open begins a window
 * (*folded_before: the entry's count so far, for the previous window's
 * finding) and the caller emits its record.
 */
static __always_inline int reopen__fold(const struct tw_reopen_key *key, __u64 now,
					__u64 *folded_before)
{
	struct tw_reopen fresh = {}, *r;

	*folded_before = 0;
	r = bpf_map_lookup_elem(&reopens, key);
	if (r) {
		if (now - r->window_start_ns < dedup_window_ns) {
			__sync_fetch_and_add(&r->folded, 1);
			stats__inc(TW_STAT_REOPENS_FOLDED);
			return 1;
		}
		*folded_before = r->folded;
		r->window_start_ns = now;
		return 0;
	}
	/* another thread of the process may race us here: both emit, which is harmless */
	fresh.window_start_ns = now;
	bpf_map_update_elem(&reopens, key, &fresh, BPF_NOEXIST);
	return 0;
}

/*
 * A record that began a window was lost (ring full): end the window again,
 * so the next open is reported instead of hiding in a count.
 */
static __always_inline void reopen__unfold(const struct tw_reopen_key *key)
{
	struct tw_reopen *r = bpf_map_lookup_elem(&reopens, key);

	if (r)
		r->window_start_ns = 0;
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
	struct tw_reopen_key key = {};
	struct tw_token_open *e;
	__u64 id_tgid, size, now, folded_before = 0;
	__u32 zero = 0, n;

	id_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(id_tgid >> 32) == self_tgid)
		return;
	stats__inc(TW_STAT_TOKEN_OPENS);
	now = bpf_ktime_get_boot_ns();

	/* a reread within the window is only counted */
	if (dedup_window_ns) {
		proc__key(task, &key.proc);
		key.file = *id;
		key.access = access;
		if (reopen__fold(&key, now, &folded_before))
			return;
	}

	e = bpf_map_lookup_elem(&record_scratch, &zero);
	if (!e) {
		if (dedup_window_ns)
			reopen__unfold(&key);
		return;
	}

	/* fill the open itself */
	e->hdr.type = TW_EVENT_TOKEN_OPEN;
	e->hdr.ts_ns = now;
	e->folded_before = folded_before;
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
	if (bpf_ringbuf_output(&events, e, size, ring__flags())) {
		stats__inc(TW_STAT_RING_FULL);
		if (dedup_window_ns)
			reopen__unfold(&key);
	}
}

#endif /* TOKENWATCH_TOKEN_RECORD_BPF_H */
