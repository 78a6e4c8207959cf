/*
 * Scale load for the agent's memory: live processes, each of which has
 * opened one of the given tokens once (round robin), so the agent has seen
 * and resolved every one of them. Each count read on stdin starts that many
 * more and prints one JSON line (the running total) once they are all up, so
 * the runner can pace the load to what the agent drains; at EOF it kills and
 * reaps them all itself (it does not rely on init to reap 30,000 orphans).
 * The children share the parent's memory (clone with CLONE_VM, as vfork
 * does, but without waiting): each is still a process of its own, with its
 * own pid and /proc entry, and this VM creates them ten times faster than
 * fork copies page tables. They touch nothing but their own small stack and
 * make raw system calls only.
 * Usage: proc_farm TOKEN_LIST_FILE   (one token path a line), then counts on stdin
 */
#define _GNU_SOURCE /* clone */
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"

#define MAX_TOKENS 4096
#define STACK_SIZE (64 * 1024)

struct child_arg {
	const char *token;
	int ready_fd;
	pid_t parent;
};

/* raw system calls only: errno and stdio belong to the parent */
static int child(void *p)
{
	const struct child_arg *a = p;
	char buf[512];
	long fd;

	/* die with the parent, whatever kills it */
	syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	if (syscall(SYS_getppid) != a->parent)
		syscall(SYS_exit, 0);
	fd = syscall(SYS_openat, AT_FDCWD, a->token, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		syscall(SYS_read, fd, buf, sizeof(buf));
		syscall(SYS_close, fd);
	}
	syscall(SYS_write, a->ready_fd, fd >= 0 ? "+" : "-", 1);
	for (;;)
		syscall(SYS_pause);
	return 0;
}

/* starts n more children; returns how many came up, counting failures in *failed */
static long spawn(long n, char **tokens, int ntokens, long *total, int ready[2], long *failed)
{
	struct child_arg *args;
	char *stacks;
	long i, got = 0;
	char c;

	stacks = mmap(NULL, (size_t)n * STACK_SIZE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	args = calloc((size_t)n, sizeof(*args));
	if (stacks == MAP_FAILED || !args)
		bench_die("memory for children");
	for (i = 0; i < n; i++) {
		args[i].token = tokens[(*total + i) % ntokens];
		args[i].ready_fd = ready[1];
		args[i].parent = getpid();
		if (clone(child, stacks + (size_t)(i + 1) * STACK_SIZE, CLONE_VM | SIGCHLD,
			  &args[i]) < 0) {
			fprintf(stderr, "clone %ld: %s\n", *total + i, strerror(errno));
			break;
		}
	}
	/* args and stacks stay: the children live on them */
	for (; got < i && read(ready[0], &c, 1) == 1; got++)
		*failed += c != '+';
	*total += got;
	return got;
}

int main(int argc, char **argv)
{
	static char *tokens[MAX_TOKENS];
	static char line[4096];
	struct bench_span span;
	long total = 0, failed = 0;
	int ntokens = 0, ready[2];
	FILE *list;

	if (argc != 2) {
		fprintf(stderr, "usage: %s TOKEN_LIST  (then counts on stdin)\n", argv[0]);
		return 2;
	}
	list = fopen(argv[1], "r");
	if (!list)
		bench_die(argv[1]);
	while (ntokens < MAX_TOKENS && fgets(line, sizeof(line), list)) {
		line[strcspn(line, "\n")] = '\0';
		if (line[0])
			tokens[ntokens++] = strdup(line);
	}
	fclose(list);
	if (ntokens == 0) {
		fprintf(stderr, "no tokens in %s\n", argv[1]);
		return 2;
	}
	/* our own process group, so one kill(0, ...) reaches every child */
	setpgid(0, 0);
	if (pipe(ready) < 0)
		bench_die("pipe");

	/* one count a line: start that many more, report the running total */
	bench_begin(&span);
	while (fgets(line, sizeof(line), stdin)) {
		long n = bench_count(strtok(line, "\n") ? line : "0");
		long got = spawn(n, tokens, ntokens, &total, ready, &failed);

		bench_report(&span, "proc_farm", total, failed);
		if (got < n)
			break;
	}
	while (fgets(line, sizeof(line), stdin))
		;
	signal(SIGTERM, SIG_IGN);
	kill(0, SIGTERM);
	while (wait(NULL) > 0 || errno == EINTR)
		;
	return failed ? 1 : 0;
}
