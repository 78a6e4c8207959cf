/*
 * compat_openat PATH: opens PATH with the 32-bit compat openat (int $0x80,
 * i386 syscall 295), reads a little without showing it, closes, prints
 * "compat_openat: opened". The way syscall-table hooks of the native ABI
 * miss. Plain i386 assembly, so building it needs only binutils:
 *   as --32 -o compat_openat.o compat_openat.S && ld -m elf_i386 -o compat_openat compat_openat.o
 */
	.set SYS_exit, 1
	.set SYS_read, 3
	.set SYS_write, 4
	.set SYS_close, 6
	.set SYS_openat, 295
	.set AT_FDCWD, -100

	.text
	.globl _start
_start:
	cmpl $2, (%esp)			/* argc */
	jne fail
	movl $SYS_openat, %eax
	movl $AT_FDCWD, %ebx
	movl 8(%esp), %ecx		/* argv[1] */
	xorl %edx, %edx			/* O_RDONLY */
	xorl %esi, %esi
	int $0x80
	testl %eax, %eax
	js fail
	movl %eax, %edi			/* the fd */
	movl $SYS_read, %eax
	movl %edi, %ebx
	movl $buf, %ecx
	movl $64, %edx
	int $0x80
	movl $SYS_close, %eax
	movl %edi, %ebx
	int $0x80
	movl $SYS_write, %eax
	movl $1, %ebx
	movl $msg, %ecx
	movl $msg_len, %edx
	int $0x80
	movl $SYS_exit, %eax
	xorl %ebx, %ebx
	int $0x80
fail:
	movl $SYS_exit, %eax
	movl $1, %ebx
	int $0x80

	.data
msg:	.ascii "compat_openat: opened\n"
	.set msg_len, . - msg

	.bss
	.lcomm buf, 64
