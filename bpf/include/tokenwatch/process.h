/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The kernel's process table (process.bpf.c) and the process entries that
 * token-open records carry.
 */
#ifndef TOKENWATCH_PROCESS_H
#define TOKENWATCH_PROCESS_H

#include "tokenwatch/common.h"

#define TW_COMM_LEN 16
#define TW_EXE_LEN 256
#define TW_ARGV_LEN 256
#define TW_MAX_ANCESTORS 16

/*
 * A process's identity: a pid alone is reused, a pid with its start time is
 * not. The start is in clock ticks since boot (USER_HZ) so that /proc's
 * starttime, which the agent uses to seed the table, gives the same key.
 */
struct tw_proc_key {
	__u32 tgid; /* process id in the node's (initial) pid namespace */
	__u32 image; /* 0: the program it runs now; n: the program its n-th exec replaced */
	__u64 start_ticks; /* start_boottime / (NSEC_PER_SEC / USER_HZ) */
};
TW_STATIC_ASSERT(sizeof(struct tw_proc_key) == 16, "tw_proc_key size");

/* flags of struct tw_proc */
#define TW_PROC_SEEDED 0x1 /* filled from /proc by the agent at start */
#define TW_PROC_EXITED 0x2 /* the process has exited (entry kept a little) */
#define TW_PROC_EXE_CUT 0x4 /* exe did not fit, or is only a basename */
#define TW_PROC_FORKED 0x8 /* forked, not (yet) exec'd: exe/argv are the parent's */

struct tw_proc {
	struct tw_proc_key key; /* this process */
	struct tw_proc_key parent; /* its parent when it was created */
	__u64 start_boottime_ns; /* full-resolution start, boot clock */
	__u64 cgroup_id; /* cgroup v2 id at exec (or fork) */
	__u64 exit_ns; /* boot clock at exit, 0 while alive */
	__u32 uid; /* real uid */
	__u32 gid; /* real gid */
	__u32 ns_pid; /* pid in its own pid namespace (1 = a container's init) */
	__u32 pidns; /* inode number of its pid namespace */
	__u32 flags; /* TW_PROC_* */
	__u32 exe_len; /* bytes used in exe, NUL excluded */
	__u32 argv_len; /* bytes used in argv */
	__u32 execs; /* execs this process has done (its current image number) */
	char comm[TW_COMM_LEN];
	char exe[TW_EXE_LEN]; /* executable path as the process's mount ns sees it */
	char argv[TW_ARGV_LEN]; /* head of argv, NUL-separated, may be cut */
};
TW_STATIC_ASSERT(sizeof(struct tw_proc) == 616, "tw_proc size");

#endif /* TOKENWATCH_PROCESS_H */
