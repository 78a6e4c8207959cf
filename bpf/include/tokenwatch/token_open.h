/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The record token_open.bpf.c emits for each open of a watched token file. */
#ifndef TOKENWATCH_TOKEN_OPEN_H
#define TOKENWATCH_TOKEN_OPEN_H

#include "tokenwatch/common.h"
#include "tokenwatch/process.h"

/* which system call (or io_uring operation) opened the file */
enum tw_open_syscall {
	TW_SYSCALL_UNKNOWN = 0, /* the hook cannot tell (fanotify) */
	TW_SYSCALL_OPENAT = 1,
	TW_SYSCALL_OPENAT2 = 2,
	TW_SYSCALL_OPEN = 3,
	TW_SYSCALL_OPEN_BY_HANDLE_AT = 4,
	TW_SYSCALL_IO_URING_OPENAT = 5, /* IORING_OP_OPENAT */
	TW_SYSCALL_IO_URING_OPENAT2 = 6, /* IORING_OP_OPENAT2 */
	TW_SYSCALL_IO_URING = 7, /* an io_uring open, operation not known (LSM, fentry) */
	TW_SYSCALL_CREAT = 8, /* creat(2), seen by LSM and fentry */
};

/* how the open reached the kernel */
enum tw_open_access {
	TW_ACCESS_SYSCALL = 0, /* a native system call */
	TW_ACCESS_IO_URING = 1, /* an io_uring request (worker, SQPOLL or inline submit) */
	TW_ACCESS_COMPAT_SYSCALL = 2, /* a 32-bit compat system call (int $0x80, sysenter) */
	TW_ACCESS_UNKNOWN = 3, /* the hook cannot tell (fanotify without an io_uring record) */
};

/* hook of struct tw_token_open: which hook mode produced the record */
enum tw_open_hook {
	TW_HOOK_TRACEPOINT = 0, /* syscall exit or io_uring_complete tracepoints */
	TW_HOOK_LSM = 1, /* BPF-LSM file_open */
	TW_HOOK_FENTRY = 2, /* fentry on security_file_open */
	TW_HOOK_FANOTIFY = 3, /* fanotify inode mark, record built by the agent */
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
	__u16 access; /* enum tw_open_access (was padding: older agents read 0, a syscall) */
	__u16 hook; /* enum tw_open_hook */
	__u64 folded_before; /* the reopens entry's folded count when this record began its window */
	struct tw_proc reader; /* the reader, complete even if it already exited */
	struct tw_proc ancestors[TW_MAX_ANCESTORS]; /* parent first */
};
TW_STATIC_ASSERT(sizeof(struct tw_token_open) == 80 + 17 * 616, "tw_token_open size");
TW_STATIC_ASSERT(__builtin_offsetof(struct tw_token_open, access) == 68, "tw_token_open access");
TW_STATIC_ASSERT(__builtin_offsetof(struct tw_token_open, folded_before) == 72,
		 "tw_token_open folded_before");
TW_STATIC_ASSERT(__builtin_offsetof(struct tw_token_open, reader) == 80, "tw_token_open reader");

/*
 * Key of the reopens map: one process's opens of one token by one route.
 * client-go rereads its token every minute; the first open in a dedup
 * window is a record, the later ones are only counted under this key.
 */
struct tw_reopen_key {
	struct tw_proc_key proc; /* the opener; image is always 0 */
	struct tw_file_id file; /* the token */
	__u32 access; /* enum tw_open_access: an io_uring open never folds into a syscall's */
	__u32 pad; /* zero */
};
TW_STATIC_ASSERT(sizeof(struct tw_reopen_key) == 40, "tw_reopen_key size");

struct tw_reopen {
	__u64 window_start_ns; /* boot clock of the open whose record began the window */
	__u64 folded; /* opens counted without a record since the entry was made; only grows */
};
TW_STATIC_ASSERT(sizeof(struct tw_reopen) == 16, "tw_reopen size");

#define TW_TOKEN_OPEN_FIXED_SIZE (sizeof(struct tw_token_open) - TW_MAX_ANCESTORS * sizeof(struct tw_proc))

#endif /* TOKENWATCH_TOKEN_OPEN_H */
