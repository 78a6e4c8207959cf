// Runs the agent's own command-line and config-file parser on the arguments the Helm chart
// renders, so that the chart can never pass a flag or config key the agent rejects.
// Usage: agent_config_check ARG...   (exit 0: accepted; 1: the agent's error on stderr)

#include <cstdio>
#include <string>
#include <vector>

#include "agent/main/config.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool help = false;
  bool version = false;
  absl::StatusOr<tokenwatch::agent::AgentConfig> config =
      tokenwatch::agent::ParseAgentCommandLine(args, &help, &version);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  // What the chart relies on, for the caller to compare with the pod spec.
  std::printf(
      "kubelet_root=%s\nstate_dir=%s\nmetrics_address=%s\nhook_mode=%s\ncollector=%s\n"
      "collector_tls_ca=%s\ncollector_tls_cert=%s\ncollector_tls_key=%s\n",
      config->kubelet_root.c_str(), config->state_dir.c_str(), config->metrics_address.c_str(),
      config->hook_mode.c_str(), config->collector.c_str(), config->collector_tls_ca.c_str(),
      config->collector_tls_cert.c_str(), config->collector_tls_key.c_str());
  return 0;
}
