/*
 * Workload 2: a system call that touches no file, to expose any cost a hook
 * puts on every system call (audit's per-syscall context, for one).
 * Usage: getppid_loop COUNT
 */
#include <sys/syscall.h>
#include <unistd.h>

#include "bench_common.h"

int main(int argc, char **argv)
{
	struct bench_span span;
	long n, i;
	volatile long sink = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: %s COUNT\n", argv[0]);
		return 2;
	}
	n = bench_count(argv[1]);
	bench_begin(&span);
	/* the raw syscall: no libc caching can skip the kernel */
	for (i = 0; i < n; i++)
		sink += syscall(SYS_getppid);
	bench_report(&span, "getppid", n, 0);
	return sink == 0;
}
