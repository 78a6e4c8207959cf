/*
 * Workload 5: TCP connect + close to a loopback listener (this process's own,
 * on a port the kernel picks), what connection observation sees.
 * The client closes with SO_LINGER 0 (a reset) so no TIME_WAIT piles up and
 * ephemeral ports never run out, whatever the count.
 * Usage: tcp_connect COUNT
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_common.h"

int main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET};
	struct linger reset = {.l_onoff = 1, .l_linger = 0};
	struct bench_span span;
	socklen_t len = sizeof(addr);
	long n, i, failures = 0;
	int listener;

	if (argc != 2) {
		fprintf(stderr, "usage: %s COUNT\n", argv[0]);
		return 2;
	}
	n = bench_count(argv[1]);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    listen(listener, 128) < 0 || getsockname(listener, (struct sockaddr *)&addr, &len) < 0)
		bench_die("listener");

	bench_begin(&span);
	for (i = 0; i < n; i++) {
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int a;

		if (c < 0)
			bench_die("socket");
		if (connect(c, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
			failures++;
			close(c);
			continue;
		}
		a = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
		setsockopt(c, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
		close(c);
		if (a >= 0)
			close(a);
		else
			failures++;
	}
	bench_report(&span, "tcp_connect", n, failures);
	close(listener);
	return failures ? 1 : 0;
}
