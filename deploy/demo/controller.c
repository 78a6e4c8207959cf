// A stand-in for a client-go controller: the container's entrypoint, which
// rereads its service-account token the way client-go's cached token source
// does (open, read, close), here every 200 ms so that a test sees many
// expected reads in a few seconds. It never prints the token: it only keeps a
// count of successful and failed reads in /tmp/controller.reads so that the
// harness can tell the entrypoint is really reading.
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static const char kTokenPath[] = "/var/run/secrets/kubernetes.io/serviceaccount/token";
static const char kStatusPath[] = "/tmp/controller.reads";

static void write_status(unsigned long ok, unsigned long failed) {
  // Written through a temporary name and renamed so the harness never reads a
  // half-written line.
  FILE* f = fopen("/tmp/.controller.reads.tmp", "w");
  if (f == NULL) return;
  fprintf(f, "%lu %lu\n", ok, failed);
  fclose(f);
  rename("/tmp/.controller.reads.tmp", kStatusPath);
}

int main(void) {
  unsigned long ok = 0, failed = 0;
  char buf[8192];
  const struct timespec period = {0, 200 * 1000 * 1000};
  for (;;) {
    int fd = open(kTokenPath, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      failed++;
    } else {
      ssize_t total = 0, n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) total += n;
      close(fd);
      if (total > 0) ok++; else failed++;
    }
    write_status(ok, failed);
    nanosleep(&period, NULL);
  }
}
