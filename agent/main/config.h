#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tokenwatch::agent {

// Everything the agent can be told. Each flag has a config-file key of the
// same name with underscores (--kubelet-root <-> kubelet_root); the command
// line wins over the file, the file over the defaults.
struct AgentConfig {
  std::string config_file;
  std::string kubelet_root = "/var/lib/kubelet";
  std::string node_name;  // default: $NODE_NAME, else the host name
  std::string collector;  // HOST:PORT; empty: local output only
  std::string findings_out = "-";
  std::string metrics_address = "0.0.0.0:9750";
  std::vector<std::string> apiservers;
  std::string state_dir = "/var/lib/tokenwatch";
  std::string hook_mode = "auto";
  std::string log_level = "info";
  // TLS to the collector (PEM files): the CA that signed the collector's certificate, and the
  // agent's client certificate and key when the collector requires one.
  std::string collector_tls_ca;
  std::string collector_tls_cert;
  std::string collector_tls_key;
  // Config file only.
  absl::Duration dedup_window = absl::Minutes(10);
  absl::Duration rescan_interval = absl::Seconds(30);
  absl::Duration correlation_window = absl::Minutes(10);  // read -> use join window
  std::vector<std::string> cluster_ranges;  // CIDRs inside the cluster; empty: the defaults
  uint32_t lineage_depth = 16;          // ancestors carried per event (1..16)
  uint32_t argv_bytes = 256;            // head of argv kept per process (16..256)
  uint32_t process_table_size = 32768;  // kernel process table entries
  // The token-open ring buffer: a power of two, at least 4096. Smaller rings
  // lose events (TW090) under bursts of reads while the agent is busy.
  uint32_t ring_buffer_bytes = 4u << 20;
  std::vector<std::string> extra_token_paths;
  std::vector<std::string> host_allowed_executables;  // empty: the built-in list
  // The delivery spool under <state_dir>/spool: its size bound and fsync interval.
  uint64_t spool_max_bytes = 256ull * 1024 * 1024;
  absl::Duration spool_sync_interval = absl::Milliseconds(100);
};

// Parses the command line (and the --config file it names). On a bad flag or
// config the status message is one line naming the file, the key or flag and
// the problem. `help` is set when --help was asked for.
absl::StatusOr<AgentConfig> ParseAgentCommandLine(const std::vector<std::string>& args,
                                                  bool* help, bool* version);

// Reads a YAML config file into `config` (keys absent from the file keep
// their values).
absl::Status LoadAgentConfigFile(const std::string& path, AgentConfig* config);

// The --help text.
std::string AgentUsage();

}  // namespace tokenwatch::agent
