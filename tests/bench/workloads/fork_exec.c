/*
 * Workload 3: fork + exec of a short program and wait for it, what lineage
 * tracking sees on every process start.
 * Usage: fork_exec PROGRAM COUNT
 */
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"

int main(int argc, char **argv)
{
	struct bench_span span;
	long n, i, failures = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: %s PROGRAM COUNT\n", argv[0]);
		return 2;
	}
	n = bench_count(argv[2]);
	bench_begin(&span);
	for (i = 0; i < n; i++) {
		char *child_argv[] = {argv[1], NULL};
		char *child_env[] = {NULL};
		int status;
		pid_t pid = fork();

		if (pid < 0)
			bench_die("fork");
		if (pid == 0) {
			execve(argv[1], child_argv, child_env);
			_exit(127);
		}
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
			failures++;
	}
	bench_report(&span, "fork_exec", n, failures);
	return failures ? 1 : 0;
}
