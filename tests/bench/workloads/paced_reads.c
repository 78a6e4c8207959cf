/*
 * Detection-latency load: opens and reads a watched token at a fixed rate
 * (absolute deadlines, so a late wake-up does not shift the schedule) and
 * records the wall-clock time just before each open(). At the end it writes
 * those times, one nanosecond count a line, to OUT so the runner can match
 * each finding to the read that caused it.
 * Usage: paced_reads TOKEN RATE_PER_S SECONDS OUT
 */
#include <fcntl.h>
#include <unistd.h>

#include "bench_common.h"

int main(int argc, char **argv)
{
	struct bench_span span;
	struct timespec next;
	uint64_t *stamps;
	long rate, seconds, n, i, failures = 0, period_ns;
	char buf[4096];
	FILE *out;

	if (argc != 5) {
		fprintf(stderr, "usage: %s TOKEN RATE SECONDS OUT\n", argv[0]);
		return 2;
	}
	rate = bench_count(argv[2]);
	seconds = bench_count(argv[3]);
	n = rate * seconds;
	period_ns = 1000000000L / rate;
	stamps = calloc((size_t)n, sizeof(*stamps));
	if (!stamps)
		bench_die("calloc");

	bench_begin(&span);
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (i = 0; i < n; i++) {
		int fd;

		next.tv_nsec += period_ns;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		stamps[i] = bench_now_ns(CLOCK_REALTIME);
		fd = open(argv[1], O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			failures++;
			continue;
		}
		if (read(fd, buf, sizeof(buf)) <= 0)
			failures++;
		close(fd);
	}
	bench_report(&span, "paced_reads", n, failures);

	out = fopen(argv[4], "w");
	if (!out)
		bench_die(argv[4]);
	for (i = 0; i < n; i++)
		fprintf(out, "%llu\n", (unsigned long long)stamps[i]);
	fclose(out);
	return failures ? 1 : 0;
}
