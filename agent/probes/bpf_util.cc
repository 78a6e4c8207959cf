#include "agent/probes/bpf_util.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace tokenwatch::probes {
namespace {

constexpr const char* kDefaultBtf = "/sys/kernel/btf/vmlinux";

// libbpf prints verifier logs and warnings on its own; we keep them at debug
// level so that a refused load is reported in the one line our caller prints.
int LibbpfPrint(enum libbpf_print_level level, const char* format, va_list args) {
  if (level == LIBBPF_DEBUG || !LogEnabled(LogLevel::kDebug)) return 0;
  char buf[1024];
  int n = vsnprintf(buf, sizeof(buf), format, args);
  if (n > 0) {
    std::string line(buf, std::min<size_t>(static_cast<size_t>(n), sizeof(buf) - 1));
    while (!line.empty() && line.back() == '\n') line.pop_back();
    LogLine(LogLevel::kDebug, absl::StrCat("libbpf: ", line));
  }
  return 0;
}

}  // namespace

void InstallLibbpfLogger() { libbpf_set_print(LibbpfPrint); }

absl::Status CheckBtf(const std::string& btf_path) {
  std::string btf = btf_path.empty() ? kDefaultBtf : btf_path;
  if (access(btf.c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "kernel BTF not found at ", btf,
        " (tokenwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)"));
  }
  return absl::OkStatus();
}

absl::Status CheckBpfPermission() {
  LIBBPF_OPTS(bpf_map_create_opts, map_opts);
  int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tw_probe", 4, 4, 1, &map_opts);
  if (fd < 0) return ErrnoStatus(errno, "cannot use BPF");
  close(fd);
  return absl::OkStatus();
}

std::array<uint64_t, TW_STAT_MAX> SumPerCpuStats(const bpf_map* map) {
  std::array<uint64_t, TW_STAT_MAX> total{};
  int ncpus = libbpf_num_possible_cpus();
  if (ncpus <= 0) return total;
  std::vector<uint64_t> values(static_cast<size_t>(ncpus));
  for (uint32_t i = 0; i < TW_STAT_MAX; ++i) {
    if (bpf_map__lookup_elem(map, &i, sizeof(i), values.data(), values.size() * sizeof(uint64_t),
                             0) != 0) {
      continue;
    }
    for (uint64_t v : values) total[i] += v;
  }
  return total;
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  err = err < 0 ? -err : err;
  std::string hint;
  if (err == EPERM || err == EACCES) hint = " (needs root, or CAP_BPF and CAP_PERFMON)";
  std::string msg = absl::StrCat(what, ": ", std::strerror(err), hint);
  if (err == EPERM || err == EACCES) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

}  // namespace tokenwatch::probes
