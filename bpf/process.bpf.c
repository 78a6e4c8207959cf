// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * process: the kernel's process table, so that lineage is captured at the
 * moment of an event rather than looked up in /proc after the processes
 * are gone.
 *
 * Raw tracepoints on the scheduler's process events: they fire for every
 * process whatever made it (fork, clone, vfork, posix_spawn, execveat,
 * binfmt_misc), carry the task pointers themselves, and need no tracefs.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "tokenwatch/process.h"
#include "procs.bpf.h"
#include "path.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TW_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} proc_stats SEC(".maps");

/* an entry is larger than the BPF stack: build it here */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_proc);
} proc_scratch SEC(".maps");

static __always_inline void stats__inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&proc_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline struct tw_proc *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&proc_scratch, &zero);
}

/*
 * A new process starts as a copy of its parent: same exe and argv until it
 * execs, which is all a forked worker ever has.
 */
SEC("raw_tracepoint/sched_process_fork")
int handle_sched_process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	struct tw_proc_key parent_key;
	struct tw_proc *e, *pe;
	struct tw_taint *t;

	/* threads share their process's entry */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	e = scratch();
	if (!e)
		return 0;

	/* start from the parent's entry, or from nothing */
	proc__key(parent, &parent_key);
	pe = proc__lookup(&parent_key);
	if (pe) {
		bpf_probe_read_kernel(e, sizeof(*e), pe);
		e->flags &= TW_PROC_EXE_CUT;
	} else {
		__builtin_memset(e, 0, sizeof(*e));
		e->flags = TW_PROC_EXE_CUT;
	}

	/* fill what is the child's own */
	proc__fill_from_task(e, child);
	e->parent = parent_key;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->exit_ns = 0;
	e->flags |= TW_PROC_FORKED;

	if (bpf_map_update_elem(&procs, &e->key, e, BPF_ANY))
		stats__inc(TW_STAT_PROC_UPDATE_FAILED);
	else
		stats__inc(TW_STAT_PROC_FORKS);

	/* a child of a tainted process is tainted too, until it exits */
	t = bpf_map_lookup_elem(&taint, &parent_key);
	if (t)
		bpf_map_update_elem(&taint, &e->key, t, BPF_ANY);
	return 0;
}

/*
 * At exec the process gets its identity: binary, argv, and the cgroup a
 * runtime moved it into between fork and exec (runc exec does).
 */
SEC("raw_tracepoint/sched_process_exec")
int handle_sched_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct tw_proc_key key;
	struct tw_proc *e, *old;
	struct mm_struct *mm;
	unsigned long arg_start, arg_end, len;
	long n;

	e = scratch();
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));

	/*
	 * keep the parent recorded at fork: it survives reparenting. A program
	 * that execs another (sh -c 'exec cat ...', a wrapper script) is kept
	 * as an image of its own and becomes the new program's parent, so the
	 * chain shows every program the process ran.
	 */
	proc__key(task, &key);
	old = bpf_map_lookup_elem(&procs, &key);
	if (old && !(old->flags & TW_PROC_FORKED)) {
		old->key.image = old->execs + 1;
		old->flags |= TW_PROC_EXITED;
		old->exit_ns = bpf_ktime_get_boot_ns();
		bpf_map_update_elem(&exited, &old->key, old, BPF_ANY);
		e->parent = old->key;
		e->execs = old->execs + 1;
	} else if (old) {
		e->parent = old->parent;
		e->execs = old->execs;
	} else {
		proc__key(BPF_CORE_READ(task, real_parent), &e->parent);
		stats__inc(TW_STAT_PROC_MISSING);
	}
	proc__fill_from_task(e, task);
	e->cgroup_id = bpf_get_current_cgroup_id();

	/*
	 * the binary really executed (the interpreter of a #! script), as the
	 * process's mount namespace names it, symlinks resolved: busybox
	 * applets and /proc/self/exe re-execs show the one binary they are
	 */
	n = path__of_file(task, BPF_CORE_READ(bprm, file), e->exe);
	if (n < 0) {
		e->flags |= TW_PROC_EXE_CUT;
		n = 0;
	}
	e->exe_len = n;

	/* the head of the new argv */
	mm = BPF_CORE_READ(task, mm);
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	len = arg_end - arg_start;
	if (len > argv_max)
		len = argv_max;
	len &= (TW_ARGV_LEN << 1) - 1;
	if (len && len <= TW_ARGV_LEN && !bpf_probe_read_user(e->argv, len, (void *)arg_start))
		e->argv_len = len;

	if (bpf_map_update_elem(&procs, &e->key, e, BPF_ANY))
		stats__inc(TW_STAT_PROC_UPDATE_FAILED);
	else
		stats__inc(TW_STAT_PROC_EXECS);
	return 0;
}

/* an exited process moves to the short-lived exited table */
SEC("raw_tracepoint/sched_process_exit")
int handle_sched_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct tw_proc_key key;
	struct tw_proc *e;

	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0;
	proc__key(task, &key);
	e = bpf_map_lookup_elem(&procs, &key);
	if (!e) {
		stats__inc(TW_STAT_PROC_MISSING);
		return 0;
	}
	e->exit_ns = bpf_ktime_get_boot_ns();
	e->flags |= TW_PROC_EXITED;
	bpf_map_update_elem(&exited, &key, e, BPF_ANY);
	bpf_map_delete_elem(&procs, &key);
	bpf_map_delete_elem(&taint, &key);
	return 0;
}
