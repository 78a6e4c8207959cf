/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The record token_open.bpf.c emits for each open of a watched token file. */
#ifndef TOKENWATCH_TOKEN_OPEN_H
#define TOKENWATCH_TOKEN_OPEN_H

#include "tokenwatch/common.h"
#include "tokenwatch/process.h"

/* which system call opened the file */
enum tw_open_syscall {
	TW_SYSCALL_OPENAT = 1,
	TW_SYSCALL_OPENAT2 = 2,
	TW_SYSCALL_OPEN = 3,
	TW_SYSCALL_OPEN_BY_HANDLE_AT = 4,
};

/*
 * Variable size: the ancestors array holds n_ancestors entries and the
 * record ends there (hdr.size says so).
 */
struct tw_token_open {
	struct tw_event_header hdr; /* type TW_EVENT_TOKEN_OPEN */
	__u32 tgid; /* reader's process id (node pid namespace) */
	__u32 pid; /* reader's thread id */
	__u32 flags; /* file->f_flags as opened (O_* bits, kernel values) */
	__u32 syscall; /* enum tw_open_syscall */
	__u64 cgroup_id; /* cgroup v2 id of the reader at the open */
	struct tw_file_id file; /* the token file */
	__u32 n_ancestors; /* entries used in ancestors */
	__u32 truncated; /* 1: the chain went on past TW_MAX_ANCESTORS */
	__u32 reader_known; /* 1: reader came from the process table */
	__u32 _pad0;
	struct tw_proc reader; /* the reader, complete even if it already exited */
	struct tw_proc ancestors[TW_MAX_ANCESTORS]; /* parent first */
};
TW_STATIC_ASSERT(sizeof(struct tw_token_open) == 72 + 17 * 616, "tw_token_open size");

#define TW_TOKEN_OPEN_FIXED_SIZE (sizeof(struct tw_token_open) - TW_MAX_ANCESTORS * sizeof(struct tw_proc))

#endif /* TOKENWATCH_TOKEN_OPEN_H */
