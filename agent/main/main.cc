// tokenwatch-agent: the node agent. See README.md, "tokenwatch-agent".
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "agent/detect/baseline.h"
#include "agent/main/agent.h"
#include "agent/main/config.h"
#include "agent/main/version.h"

namespace {

tokenwatch::agent::Agent* g_agent = nullptr;

void OnSignal(int) {
  if (g_agent != nullptr) g_agent->Stop();
}

void OnHangup(int) {
  if (g_agent != nullptr) g_agent->RequestReload();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // --export-profile[=NAMESPACE/WORKLOAD-GLOB]: print the learned profiles in
  // --state-dir as policy YAML and exit (the profile lives on this node).
  bool export_profile = false;
  std::string export_filter;
  for (auto it = args.begin(); it != args.end();) {
    if (*it == "--export-profile" || it->rfind("--export-profile=", 0) == 0) {
      export_profile = true;
      if (it->size() > 16) export_filter = it->substr(17);
      it = args.erase(it);
    } else {
      ++it;
    }
  }
  bool help = false, version = false;
  auto config = tokenwatch::agent::ParseAgentCommandLine(args, &help, &version);
  if (help) {
    std::fputs(tokenwatch::agent::AgentUsage().c_str(), stdout);
    return 0;
  }
  if (version) {
    std::printf("tokenwatch-agent %s (%s)\n", tokenwatch::kVersion, tokenwatch::kGitCommit);
    return 0;
  }
  if (!config.ok()) {
    std::fprintf(stderr, "tokenwatch-agent: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (!config->config_file.empty()) {
    // The policy part of the file is checked here too, so that every config
    // error is reported the same way, before anything is loaded.
    if (auto policy = tokenwatch::detect::Policy::LoadFile(config->config_file); !policy.ok()) {
      std::fprintf(stderr, "tokenwatch-agent: %s\n",
                   std::string(policy.status().message()).c_str());
      return 2;
    }
  }
  if (export_profile) {
    auto yaml =
        tokenwatch::detect::ExportProfile(config->state_dir, config->config_file, export_filter);
    if (!yaml.ok()) {
      std::fprintf(stderr, "tokenwatch-agent: %s\n", std::string(yaml.status().message()).c_str());
      return 1;
    }
    std::fputs(yaml->c_str(), stdout);
    return 0;
  }
  tokenwatch::agent::Agent agent(*std::move(config));
  g_agent = &agent;
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  struct sigaction hangup = {};
  hangup.sa_handler = OnHangup;
  sigaction(SIGHUP, &hangup, nullptr);
  signal(SIGPIPE, SIG_IGN);
  if (absl::Status status = agent.Init(); !status.ok()) {
    std::fprintf(stderr, "tokenwatch-agent: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  agent.Run();
  g_agent = nullptr;
  return 0;
}
