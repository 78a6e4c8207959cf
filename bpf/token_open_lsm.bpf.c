// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * token_open_lsm: the strongest token hooks, where the kernel allows them.
 * Every way of opening a file ends in security_file_open() with the struct
 * file already set up: open, openat, openat2, creat, open_by_handle_at,
 * 32-bit compat calls and io_uring requests alike. So one hook there sees
 * every open, and matching the inode against the tokens map costs a hash
 * lookup per open. Two ways to get there, the agent picks one before load:
 * BPF-LSM's file_open (needs "bpf" in the lsm= list) or fentry on
 * security_file_open (needs BPF trampolines). Both build the record in
 * lib/token_record.bpf.h, like the tracepoint hooks in token_open.bpf.c.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "token_record.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TW_PF_IO_WORKER 0x00000010 /* task is an io-wq worker or SQPOLL thread */
#define TW_TS_COMPAT 0x0002 /* x86 thread_info.status: in a 32-bit syscall */

/*
 * How the current task came to open a file: an io_uring worker has no
 * system call of its own; otherwise the syscall number in the saved
 * registers names the call, in the native or the 32-bit table.
 */
static __always_inline void open__how(struct task_struct *task, __u32 *syscall, __u16 *access)
{
	*syscall = TW_SYSCALL_UNKNOWN;
	*access = TW_ACCESS_SYSCALL;
	if (BPF_CORE_READ(task, flags) & TW_PF_IO_WORKER) {
		*syscall = TW_SYSCALL_IO_URING;
		*access = TW_ACCESS_IO_URING;
		return;
	}
#ifdef __TARGET_ARCH_x86
	{
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		long nr = BPF_CORE_READ(regs, orig_ax);

		if (BPF_CORE_READ(task, thread_info.status) & TW_TS_COMPAT) {
			*access = TW_ACCESS_COMPAT_SYSCALL;
			switch (nr) {
			case 5: *syscall = TW_SYSCALL_OPEN; break;
			case 8: *syscall = TW_SYSCALL_CREAT; break;
			case 295: *syscall = TW_SYSCALL_OPENAT; break;
			case 342: *syscall = TW_SYSCALL_OPEN_BY_HANDLE_AT; break;
			case 437: *syscall = TW_SYSCALL_OPENAT2; break;
			case 426:
				*syscall = TW_SYSCALL_IO_URING;
				*access = TW_ACCESS_IO_URING;
				break;
			}
			return;
		}
		switch (nr) {
		case 2: *syscall = TW_SYSCALL_OPEN; break;
		case 85: *syscall = TW_SYSCALL_CREAT; break;
		case 257: *syscall = TW_SYSCALL_OPENAT; break;
		case 304: *syscall = TW_SYSCALL_OPEN_BY_HANDLE_AT; break;
		case 437: *syscall = TW_SYSCALL_OPENAT2; break;
		case 426: /* io_uring_enter: a request completed inline at submit */
			*syscall = TW_SYSCALL_IO_URING;
			*access = TW_ACCESS_IO_URING;
			break;
		}
	}
#endif
}

static __always_inline void handle_open(struct file *file, __u16 hook)
{
	struct task_struct *task;
	struct tw_file_id id = {};
	__u32 syscall;
	__u16 access;

	/* the cheap test first: this runs for every open on the node */
	if (!token__match(file, &id))
		return;
	task = bpf_get_current_task_btf();
	open__how(task, &syscall, &access);
	token_record__emit(task, file, &id, syscall, access, hook);
}

/* the LSM hook: called for every open once the file is set up, never denies */
SEC("lsm/file_open")
int BPF_PROG(handle_file_open, struct file *file)
{
	handle_open(file, TW_HOOK_LSM);
	return 0;
}

/* the same place through a trampoline, for kernels without the BPF LSM */
SEC("fentry/security_file_open")
int BPF_PROG(handle_security_file_open, struct file *file)
{
	handle_open(file, TW_HOOK_FENTRY);
	return 0;
}
