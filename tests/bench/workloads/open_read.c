/*
 * Workload 1: open + read + close of an ordinary file that is not a token,
 * the path every process on the node pays for.
 * Usage: open_read FILE COUNT
 */
#include <fcntl.h>
#include <unistd.h>

#include "bench_common.h"

int main(int argc, char **argv)
{
	struct bench_span span;
	char buf[64];
	long n, i, failures = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: %s FILE COUNT\n", argv[0]);
		return 2;
	}
	n = bench_count(argv[2]);
	bench_begin(&span);
	for (i = 0; i < n; i++) {
		int fd = open(argv[1], O_RDONLY | O_CLOEXEC);

		if (fd < 0) {
			failures++;
			continue;
		}
		if (read(fd, buf, sizeof(buf)) < 0)
			failures++;
		close(fd);
	}
	bench_report(&span, "open_read", n, failures);
	return failures ? 1 : 0;
}
