/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The record token_open.bpf.c emits for each open of a watched token file. */
#ifndef TOKENWATCH_TOKEN_OPEN_H
#define TOKENWATCH_TOKEN_OPEN_H

#include "tokenwatch/common.h"

#define TW_COMM_LEN 16
#define TW_EXE_NAME_LEN 64
#define TW_ARGV_LEN 256

/* which system call opened the file */
enum tw_open_syscall {
	TW_SYSCALL_OPENAT = 1,
	TW_SYSCALL_OPENAT2 = 2,
	TW_SYSCALL_OPEN = 3,
	TW_SYSCALL_OPEN_BY_HANDLE_AT = 4,
};

struct tw_token_open {
	struct tw_event_header hdr; /* type TW_EVENT_TOKEN_OPEN */
	__u32 tgid; /* reader's process id (host pid namespace) */
	__u32 pid; /* reader's thread id */
	__u32 ppid; /* tgid of the real parent */
	__u32 uid; /* real uid */
	__u32 gid; /* real gid */
	__u32 flags; /* file->f_flags as opened (O_* bits) */
	__u32 syscall; /* enum tw_open_syscall */
	__u32 argv_len; /* bytes used in argv */
	__u64 cgroup_id; /* cgroup v2 id of the reader */
	__u64 start_boottime_ns; /* reader's start, boot clock: with tgid, its identity */
	struct tw_file_id file; /* the token file */
	char comm[TW_COMM_LEN]; /* task comm */
	char exe_name[TW_EXE_NAME_LEN]; /* basename of mm->exe_file, NUL-terminated */
	char argv[TW_ARGV_LEN]; /* head of argv, NUL-separated, may be cut */
};
TW_STATIC_ASSERT(sizeof(struct tw_token_open) == 416, "tw_token_open size");

#endif /* TOKENWATCH_TOKEN_OPEN_H */
