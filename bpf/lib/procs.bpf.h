/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The process table, shared by every object that needs lineage. process.bpf.c
 * fills it; other objects declare the same maps and the agent makes them
 * reuse process.bpf.c's (bpf_map__reuse_fd) before load.
 */
#ifndef TOKENWATCH_PROCS_BPF_H
#define TOKENWATCH_PROCS_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "tokenwatch/process.h"
#include "tokenwatch/token_use.h"

/* set by the agent before load */
const volatile __u64 ns_per_tick = 10000000; /* nanoseconds per USER_HZ tick */
const volatile __u32 argv_max = TW_ARGV_LEN; /* bytes of argv kept (<= TW_ARGV_LEN) */

/*
 * Live processes. LRU, so a fork storm larger than the table evicts the
 * least recently used entries instead of refusing new ones: the newest
 * processes, an attacker's among them, are always tracked. Evictions show
 * up as exits that find no entry (TW_STAT_PROC_MISSING).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct tw_proc_key);
	__type(value, struct tw_proc);
} procs SEC(".maps");

/*
 * Recently exited processes, kept so that an event handled after its
 * process (and its parents) exited still finds the lineage: a shell
 * pipeline's cat lives about a millisecond.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct tw_proc_key);
	__type(value, struct tw_proc);
} exited SEC(".maps");

/*
 * Processes that read a token, or descend from one that did (written by
 * the agent when it sees a read; inherited at fork; cleared at exit).
 * Value: struct tw_taint from tokenwatch/token_use.h.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tw_proc_key);
	__type(value, struct tw_taint);
} taint SEC(".maps");

static __always_inline void proc__key(struct task_struct *task, struct tw_proc_key *key)
{
	key->tgid = BPF_CORE_READ(task, tgid);
	key->image = 0;
	key->start_ticks = BPF_CORE_READ(task, group_leader, start_boottime) / ns_per_tick;
}

static __always_inline struct tw_proc *proc__lookup(const struct tw_proc_key *key)
{
	struct tw_proc *p = bpf_map_lookup_elem(&procs, key);

	if (!p)
		p = bpf_map_lookup_elem(&exited, key);
	return p;
}

/* pid and pid namespace as the task's own (innermost) namespace sees them */
static __always_inline void proc__ns_pid(struct task_struct *task, __u32 *ns_pid, __u32 *pidns)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid upid = {};

	bpf_probe_read_kernel(&upid, sizeof(upid), &pid->numbers[level & 31]);
	*ns_pid = upid.nr;
	*pidns = BPF_CORE_READ(upid.ns, ns.inum);
}

/* the fields any entry can take from the task itself */
static __always_inline void proc__fill_from_task(struct tw_proc *e, struct task_struct *task)
{
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);

	proc__key(task, &e->key);
	e->start_boottime_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	e->uid = BPF_CORE_READ(task, real_cred, uid.val);
	e->gid = BPF_CORE_READ(task, real_cred, gid.val);
	proc__ns_pid(task, &e->ns_pid, &e->pidns);
	bpf_core_read_str(e->comm, sizeof(e->comm), &leader->comm);
}

#endif /* TOKENWATCH_PROCS_BPF_H */
