/*
 * Workload 4: one long-lived process rereading a watched token in a loop,
 * the way client-go rereads its token, only much faster: what per-process
 * dedup must absorb. The token's content is read and dropped, never printed.
 * Usage: token_reread TOKEN_PATH COUNT
 */
#include <fcntl.h>
#include <unistd.h>

#include "bench_common.h"

int main(int argc, char **argv)
{
	struct bench_span span;
	char buf[4096];
	long n, i, failures = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: %s TOKEN COUNT\n", argv[0]);
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
		if (read(fd, buf, sizeof(buf)) <= 0)
			failures++;
		close(fd);
	}
	bench_report(&span, "token_reread", n, failures);
	return failures ? 1 : 0;
}
