// Opens a file with openat2(2), which some token-read detectors miss, reads it
// and prints only the number of bytes read (never the content).
// Usage: openat2_read PATH
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PATH\n", argv[0]);
    return 2;
  }
  struct open_how how;
  memset(&how, 0, sizeof(how));
  how.flags = O_RDONLY | O_CLOEXEC;
  int fd = (int)syscall(SYS_openat2, AT_FDCWD, argv[1], &how, sizeof(how));
  if (fd < 0) {
    perror("openat2");
    return 1;
  }
  char buf[8192];
  ssize_t total = 0, n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) total += n;
  close(fd);
  printf("%zd\n", total);
  return total > 0 ? 0 : 1;
}
