// Opens a file by handle: name_to_handle_at(2) turns the path into a file
// handle without opening it, then open_by_handle_at(2) opens the handle, a
// path-less open that path-matching detectors cannot see. Prints only the
// number of bytes read (never the content). Needs CAP_DAC_READ_SEARCH.
// Usage: handle_read PATH
#define _GNU_SOURCE
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PATH\n", argv[0]);
    return 2;
  }
  struct file_handle* handle = malloc(sizeof(*handle) + MAX_HANDLE_SZ);
  if (handle == NULL) return 1;
  handle->handle_bytes = MAX_HANDLE_SZ;
  int mount_id;
  if (name_to_handle_at(AT_FDCWD, argv[1], handle, &mount_id, AT_SYMLINK_FOLLOW) != 0) {
    perror("name_to_handle_at");
    return 1;
  }
  // Any descriptor on the same filesystem names the mount; the file's
  // directory is one (opening a directory is not a token read).
  char* dir_copy = strdup(argv[1]);
  int mount_fd = open(dirname(dir_copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (mount_fd < 0) {
    perror("open directory");
    return 1;
  }
  int fd = open_by_handle_at(mount_fd, handle, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    perror("open_by_handle_at");
    return 1;
  }
  char buf[8192];
  ssize_t total = 0, n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) total += n;
  close(fd);
  close(mount_fd);
  printf("%zd\n", total);
  return total > 0 ? 0 : 1;
}
