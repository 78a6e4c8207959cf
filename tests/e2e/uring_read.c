/*
 * Opens a file through io_uring (IORING_OP_OPENAT), never through an open
 * system call, and reads a few bytes without printing them: the
 * "curing"-style reader that syscall tracepoints miss. Built static with
 * Debian's liburing-dev so it runs inside a container.
 *
 *   uring_read PATH             result is an fd in the process's table
 *   uring_read --direct PATH    result is a direct descriptor (fixed-file slot 0)
 *   uring_read --alloc PATH     direct descriptor, slot chosen by the kernel
 */
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct io_uring ring;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	const char *mode = argc == 3 ? argv[1] : "";
	const char *path = argv[argc - 1];
	char buf[64];
	int ret, res;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: uring_read [--direct|--alloc] PATH\n");
		return 2;
	}
	ret = io_uring_queue_init(4, &ring, 0);
	if (ret < 0) {
		fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-ret));
		return 1;
	}
	if (strcmp(mode, "") != 0) {
		int slots[1] = {-1};

		ret = io_uring_register_files(&ring, slots, 1);
		if (ret < 0) {
			fprintf(stderr, "io_uring_register_files: %s\n", strerror(-ret));
			return 1;
		}
	}
	sqe = io_uring_get_sqe(&ring);
	if (strcmp(mode, "--direct") == 0)
		io_uring_prep_openat_direct(sqe, AT_FDCWD, path, O_RDONLY, 0, 0);
	else if (strcmp(mode, "--alloc") == 0)
		io_uring_prep_openat_direct(sqe, AT_FDCWD, path, O_RDONLY, 0,
					    IORING_FILE_INDEX_ALLOC);
	else
		io_uring_prep_openat(sqe, AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0);
	io_uring_submit(&ring);
	ret = io_uring_wait_cqe(&ring, &cqe);
	if (ret < 0) {
		fprintf(stderr, "io_uring_wait_cqe: %s\n", strerror(-ret));
		return 1;
	}
	res = cqe->res;
	io_uring_cqe_seen(&ring, cqe);
	if (res < 0) {
		fprintf(stderr, "io_uring openat %s: %s\n", path, strerror(-res));
		return 1;
	}
	if (strcmp(mode, "") == 0) {
		/* read and drop: the content is never shown */
		if (read(res, buf, sizeof(buf)) < 0)
			return 1;
		close(res);
	}
	printf("uring_read: opened %s (%s)\n", path, mode[0] ? mode + 2 : "fd");
	io_uring_queue_exit(&ring);
	return 0;
}
