/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Types shared by the BPF programs and the agent. Kept tiny and boring:
 * fixed-width fields, fixed arrays, explicit padding, no pointers or bool,
 * and a static assertion on every size, so that both compilers agree.
 */
#ifndef TOKENWATCH_COMMON_H
#define TOKENWATCH_COMMON_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#ifdef __cplusplus
#define TW_STATIC_ASSERT static_assert
#else
#define TW_STATIC_ASSERT _Static_assert
#endif

/* every record on the ring starts with this header */
struct tw_event_header {
	__u32 type; /* enum tw_event_type */
	__u32 size; /* bytes of the whole record, header included */
	__u64 ts_ns; /* bpf_ktime_get_boot_ns() when the event happened */
};
TW_STATIC_ASSERT(sizeof(struct tw_event_header) == 16, "tw_event_header size");

enum tw_event_type {
	TW_EVENT_TOKEN_OPEN = 1,
};

/* a file as the kernel names it: super block device and inode number */
struct tw_file_id {
	__u64 dev; /* inode->i_sb->s_dev, kernel encoding (major << 20 | minor) */
	__u64 ino; /* inode->i_ino */
};
TW_STATIC_ASSERT(sizeof(struct tw_file_id) == 16, "tw_file_id size");

/* per-CPU counters, indexes of the stats array map */
enum tw_stat {
	TW_STAT_RING_FULL = 0, /* a record was lost: ring buffer reserve failed */
	TW_STAT_TOKEN_OPENS = 1, /* token opens seen (emitted or not) */
	TW_STAT_FD_UNRESOLVED = 2, /* an open returned an fd we could not resolve */
	TW_STAT_PROC_MISSING = 3, /* an exit or lookup found no entry (evicted) */
	TW_STAT_PROC_UPDATE_FAILED = 4, /* the process table refused an entry */
	TW_STAT_PROC_EXECS = 5, /* execs recorded */
	TW_STAT_PROC_FORKS = 6, /* forks recorded */
	TW_STAT_REOPENS_FOLDED = 7, /* token opens counted in the reopens map, no record */
	TW_STAT_MAX = 8,
};

#endif /* TOKENWATCH_COMMON_H */
