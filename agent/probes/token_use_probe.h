#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tokenwatch/token_use.h"

struct token_use_bpf;
struct ring_buffer;
struct bpf_link;

namespace tokenwatch::probes {

// Owns the token_use skeleton: outbound TCP connections seen where the
// kernel moves a socket to SYN_SENT (reported for watched destinations and
// tainted processes, remembered for every process), and command lines that
// carry a JWT. Shares the process table and the taint map with ProcessProbe.
//
// Threading: Poll() on the event thread; map updates from any thread.
class TokenUseProbe {
 public:
  struct Options {
    std::string btf_path;
    uint32_t self_tgid = 0;
    int procs_fd = -1;   // ProcessProbe::procs_fd()
    int exited_fd = -1;  // ProcessProbe::exited_fd()
    int taint_fd = -1;   // ProcessProbe::taint_fd()
    uint32_t lineage_depth = TW_MAX_ANCESTORS;
    uint32_t argv_bytes = TW_ARGV_LEN;
  };
  struct Handlers {
    std::function<void(const tw_connect&)> on_connect;
    // The argv buffer holds a raw JWT: the handler must redact it at once
    // and keep nothing of it.
    std::function<void(const tw_argv_token&)> on_argv_token;
  };
  struct Recent {
    tw_proc_key key;
    tw_recent_conns conns;
  };

  static absl::StatusOr<std::unique_ptr<TokenUseProbe>> Create(const Options& options);
  ~TokenUseProbe();
  TokenUseProbe(const TokenUseProbe&) = delete;
  TokenUseProbe& operator=(const TokenUseProbe&) = delete;

  // Replaces the set of always-reported destinations.
  absl::Status SetWatchedDestinations(const std::vector<std::pair<tw_endpoint, uint32_t>>& dests);
  // Marks a process tainted by the token read `read_id` until `expires_ns`
  // (boot clock), for connections made in the cgroup `cgroup_id` (the
  // reader's; see struct tw_taint).
  absl::Status Taint(const tw_proc_key& key, uint64_t read_id, uint64_t expires_ns,
                     uint64_t cgroup_id);
  // Every process's remembered recent connections.
  std::vector<Recent> RecentConnections() const;

  absl::StatusOr<int> Poll(absl::Duration timeout, const Handlers& handlers);
  std::array<uint64_t, TW_STAT_MAX> ReadStats() const;
  const std::vector<std::string>& attached() const { return attached_; }

 private:
  TokenUseProbe() = default;
  static int OnSample(void* ctx, void* data, size_t size);

  token_use_bpf* skel_ = nullptr;
  ring_buffer* ring_ = nullptr;
  int taint_fd_ = -1;
  std::vector<bpf_link*> links_;
  std::vector<std::string> attached_;
  const Handlers* handlers_ = nullptr;
  int handled_ = 0;
};

}  // namespace tokenwatch::probes
