/*
 * Test helper for the read -> use scenarios (static, runs in the container):
 *   use_helper read-then-connect TOKEN ADDR PORT
 *   use_helper connect-then-read TOKEN ADDR PORT
 * Reads the token and makes one TCP connection, in the given order, and
 * sends the byte count (never the token) over it.
 *   use_helper connect ADDR PORT
 * Only connects (a process that never read a token).
 *   use_helper reuse-pid PID ADDR PORT
 * Forks until a child gets pid PID (setting the pid namespace's ns_last_pid,
 * root only), and that child connects: a newcomer with an exited reader's
 * pid. Prints "reused PID" on success; exits 3 when no child got it within
 * a bounded number of tries.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static long read_token(const char *path)
{
	char buf[8192];
	int fd = open(path, O_RDONLY);
	long n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf));
	close(fd);
	memset(buf, 0, sizeof(buf));
	return n;
}

static int connect_to(const char *addr, int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int send_and_close(int fd, long n)
{
	char msg[64];

	snprintf(msg, sizeof(msg), "%ld bytes\n", n);
	if (write(fd, msg, strlen(msg)) < 0)
		return 1;
	usleep(100 * 1000);
	close(fd);
	return 0;
}

/* A child with pid `want` connects; other children exit at once. */
static int reuse_pid(long want, const char *addr, int port)
{
	for (int i = 0; i < 2000; i++) {
		FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "w");
		pid_t child;
		int status;

		if (!f || fprintf(f, "%ld", want - 1) < 0 || fclose(f) != 0)
			return 4;
		child = fork();
		if (child < 0)
			return 4;
		if (child == 0) {
			int fd;

			if (getpid() != want)
				_exit(10);
			fd = connect_to(addr, port);
			_exit(fd < 0 ? 1 : send_and_close(fd, 0));
		}
		if (waitpid(child, &status, 0) != child || !WIFEXITED(status))
			return 4;
		if (WEXITSTATUS(status) == 10)
			continue;
		if (WEXITSTATUS(status) != 0)
			return 1;
		printf("reused %ld\n", want);
		return 0;
	}
	return 3;
}

int main(int argc, char **argv)
{
	long n = 0;
	int fd;

	if (argc == 4 && strcmp(argv[1], "connect") == 0) {
		fd = connect_to(argv[2], atoi(argv[3]));
		return fd < 0 ? 1 : send_and_close(fd, 0);
	}
	if (argc == 5 && strcmp(argv[1], "reuse-pid") == 0)
		return reuse_pid(atol(argv[2]), argv[3], atoi(argv[4]));
	if (argc != 5)
		return 2;
	if (strcmp(argv[1], "read-then-connect") == 0) {
		n = read_token(argv[2]);
		usleep(200 * 1000);
		fd = connect_to(argv[3], atoi(argv[4]));
	} else {
		fd = connect_to(argv[3], atoi(argv[4]));
		usleep(300 * 1000);
		n = read_token(argv[2]);
	}
	if (fd < 0 || n < 0)
		return 1;
	if (send_and_close(fd, n))
		return 1;
	printf("%ld\n", n);
	return 0;
}
