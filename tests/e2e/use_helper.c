/*
 * Test helper for the read -> use scenarios (static, runs in the container):
 *   use_helper read-then-connect TOKEN ADDR PORT
 *   use_helper connect-then-read TOKEN ADDR PORT
 * Reads the token and makes one TCP connection, in the given order, and
 * sends the byte count (never the token) over it.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

int main(int argc, char **argv)
{
	long n = 0;
	int fd;
	char msg[64];

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
	snprintf(msg, sizeof(msg), "%ld bytes\n", n);
	if (write(fd, msg, strlen(msg)) < 0)
		return 1;
	usleep(100 * 1000);
	close(fd);
	printf("%ld\n", n);
	return 0;
}
