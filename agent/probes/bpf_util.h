#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "tokenwatch/common.h"

struct bpf_map;

namespace tokenwatch::probes {

// Shared by the skeleton owners: kernel checks and libbpf error mapping.

// Routes libbpf's own messages to our log at debug level.
void InstallLibbpfLogger();

// The kernel's BTF is readable (or the override is), or a one-line error.
absl::Status CheckBtf(const std::string& btf_path);

// BPF may be used at all (a tiny map can be created), or a one-line error
// naming the missing privilege.
absl::Status CheckBpfPermission();

// The per-CPU counters of a stats array map (enum tw_stat), summed over CPUs.
// A counter that cannot be read counts as 0.
std::array<uint64_t, TW_STAT_MAX> SumPerCpuStats(const bpf_map* map);

// "what: strerror(err) (hint)" as a Status; EPERM/EACCES become
// PERMISSION_DENIED with the capabilities to grant.
absl::Status ErrnoStatus(int err, absl::string_view what);

}  // namespace tokenwatch::probes
