/*
 * What every workload shares: argument parsing, the clocks, and the one JSON
 * line each prints when its loop ends. The runner reads that line; the
 * workload's own CPU time (user + system, its own and its waited children's)
 * is the primary measure, since on a shared machine it excludes time spent
 * waiting for a CPU while still charging every in-kernel hook to the process
 * that triggers it.
 */
#pragma once

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static inline uint64_t bench_now_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t bench_tv_ns(const struct timeval *tv)
{
	return (uint64_t)tv->tv_sec * 1000000000ull + (uint64_t)tv->tv_usec * 1000ull;
}

/* user + system time of this process and of its waited-for children */
static inline uint64_t bench_cpu_ns(void)
{
	struct rusage self, children;

	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &children);
	return bench_tv_ns(&self.ru_utime) + bench_tv_ns(&self.ru_stime) +
	       bench_tv_ns(&children.ru_utime) + bench_tv_ns(&children.ru_stime);
}

static inline long bench_count(const char *arg)
{
	char *end;
	long n = strtol(arg, &end, 10);

	if (*arg == '\0' || *end != '\0' || n <= 0) {
		fprintf(stderr, "bad count '%s'\n", arg);
		exit(2);
	}
	return n;
}

struct bench_span {
	uint64_t wall0, cpu0;
};

static inline void bench_begin(struct bench_span *s)
{
	s->wall0 = bench_now_ns(CLOCK_MONOTONIC);
	s->cpu0 = bench_cpu_ns();
}

/* the one line the runner parses */
static inline void bench_report(const struct bench_span *s, const char *name, long iterations,
				long failures)
{
	uint64_t wall = bench_now_ns(CLOCK_MONOTONIC) - s->wall0;
	uint64_t cpu = bench_cpu_ns() - s->cpu0;

	printf("{\"workload\":\"%s\",\"iterations\":%ld,\"failures\":%ld,"
	       "\"wall_ns\":%llu,\"cpu_ns\":%llu}\n",
	       name, iterations, failures, (unsigned long long)wall, (unsigned long long)cpu);
	fflush(stdout);
}

static inline void bench_die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(1);
}
