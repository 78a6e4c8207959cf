/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The current task and its ancestors as the process table knows them, for
 * any record that carries lineage.
 */
#ifndef TOKENWATCH_LINEAGE_BPF_H
#define TOKENWATCH_LINEAGE_BPF_H

#include "procs.bpf.h"
#include "path.bpf.h"

/* set by the agent before load */
const volatile __u32 lineage_depth = TW_MAX_ANCESTORS;

/* the actor when the table does not know it (evicted) */
static __always_inline void lineage__actor_from_task(struct tw_proc *r, struct task_struct *task)
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

/*
 * Fills *actor and ancestors[] (parent first) for the current task; returns
 * the number of ancestors. *truncated is set when the chain went on,
 * *known when the actor came from the table.
 */
static __always_inline __u32 lineage__fill(struct task_struct *task, struct tw_proc *actor,
					   struct tw_proc *ancestors, __u32 *truncated,
					   __u32 *known)
{
	struct tw_proc_key key;
	struct tw_proc *p;
	__u32 i, n = 0;

	proc__key(task, &key);
	p = proc__lookup(&key);
	if (p) {
		bpf_probe_read_kernel(actor, sizeof(*actor), p);
		*known = 1;
	} else {
		lineage__actor_from_task(actor, task);
		*known = 0;
	}
	key = actor->parent;
	*truncated = 0;
	for (i = 0; i < TW_MAX_ANCESTORS; i++) {
		if (i >= lineage_depth || key.tgid == 0)
			break;
		p = proc__lookup(&key);
		if (!p)
			break;
		bpf_probe_read_kernel(&ancestors[i], sizeof(ancestors[i]), p);
		key = p->parent;
		n = i + 1;
	}
	if (n >= lineage_depth && key.tgid != 0)
		*truncated = 1;
	return n;
}

#endif /* TOKENWATCH_LINEAGE_BPF_H */
