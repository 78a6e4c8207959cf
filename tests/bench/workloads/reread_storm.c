/*
 * Reread storm: one long-lived process opening, reading and closing a
 * watched token at a fixed rate for a fixed time, what the kernel-side dedup
 * must absorb when a node's controllers reread their tokens far more often
 * than client-go does. The runner starts two of these at the same START
 * moment.
 *
 * Pacing: a 50,000/s schedule has one open every 20 us, shorter than a
 * sleep's own cost, so the loop wakes on absolute 1 ms ticks and performs
 * every open due by then (a late wake-up is caught up, never shifts the
 * schedule). The run ends at START + SECONDS whether or not the schedule was
 * met, so a hook that slows the opens shows as a lower achieved rate, never
 * as a longer run. The token's content is read and dropped, never printed.
 *
 * Usage: reread_storm TOKEN RATE_PER_S SECONDS START_MONOTONIC_NS
 * (START 0: now). Prints one JSON line: the opens done, the rate reached,
 * the largest backlog behind the schedule, its CPU and wall time.
 */
#include <fcntl.h>
#include <unistd.h>

#include "bench_common.h"

#define TICK_NS 1000000ull

static void ns_to_ts(uint64_t ns, struct timespec *ts)
{
	ts->tv_sec = (time_t)(ns / 1000000000ull);
	ts->tv_nsec = (long)(ns % 1000000000ull);
}

int main(int argc, char **argv)
{
	uint64_t start, end, now, due, total, done = 0, backlog_max = 0, tick;
	long rate, seconds, failures = 0;
	struct bench_span span;
	struct timespec ts;
	char buf[4096];
	char *endp;

	if (argc != 5) {
		fprintf(stderr, "usage: %s TOKEN RATE SECONDS START_MONOTONIC_NS\n", argv[0]);
		return 2;
	}
	rate = bench_count(argv[2]);
	seconds = bench_count(argv[3]);
	start = strtoull(argv[4], &endp, 10);
	if (*argv[4] == '\0' || *endp != '\0') {
		fprintf(stderr, "bad start '%s'\n", argv[4]);
		return 2;
	}
	if (start == 0)
		start = bench_now_ns(CLOCK_MONOTONIC);
	total = (uint64_t)rate * (uint64_t)seconds;
	end = start + (uint64_t)seconds * 1000000000ull;

	ns_to_ts(start, &ts);
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
	bench_begin(&span);
	for (tick = 1;; tick++) {
		now = bench_now_ns(CLOCK_MONOTONIC);
		if (now >= end)
			break;
		/* opens due by now on the schedule, counting the one at START */
		due = (now - start) * (uint64_t)rate / 1000000000ull + 1;
		if (due > total)
			due = total;
		if (due > done && due - done > backlog_max)
			backlog_max = due - done;
		while (done < due) {
			int fd;

			/* a backlog is caught up only until the deadline */
			if ((done & 63) == 0 && bench_now_ns(CLOCK_MONOTONIC) >= end)
				break;
			fd = open(argv[1], O_RDONLY | O_CLOEXEC);
			done++;
			if (fd < 0) {
				failures++;
				continue;
			}
			if (read(fd, buf, sizeof(buf)) <= 0)
				failures++;
			close(fd);
		}
		if (done >= total || done < due)
			break;
		/* the next tick after now: a wake-up late by several ticks skips them */
		if (start + tick * TICK_NS <= now)
			tick = (now - start) / TICK_NS + 1;
		ns_to_ts(start + tick * TICK_NS, &ts);
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
	}
	now = bench_now_ns(CLOCK_MONOTONIC);
	{
		uint64_t wall = now - span.wall0;
		uint64_t cpu = bench_cpu_ns() - span.cpu0;

		printf("{\"workload\":\"reread_storm\",\"iterations\":%llu,\"failures\":%ld,"
		       "\"target\":%llu,\"rate_per_s\":%ld,\"seconds\":%ld,"
		       "\"achieved_per_s\":%.1f,\"backlog_max\":%llu,"
		       "\"wall_ns\":%llu,\"cpu_ns\":%llu}\n",
		       (unsigned long long)done, failures, (unsigned long long)total, rate, seconds,
		       wall ? (double)done * 1e9 / (double)wall : 0.0,
		       (unsigned long long)backlog_max, (unsigned long long)wall,
		       (unsigned long long)cpu);
	}
	fflush(stdout);
	return failures ? 1 : 0;
}
