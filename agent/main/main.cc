// tokenwatch-agent: the node agent. See README.md, "tokenwatch-agent".
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "agent/main/agent.h"
#include "agent/main/config.h"
#include "agent/main/version.h"

namespace {

tokenwatch::agent::Agent* g_agent = nullptr;

void OnSignal(int) {
  if (g_agent != nullptr) g_agent->Stop();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
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
  tokenwatch::agent::Agent agent(*std::move(config));
  g_agent = &agent;
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
  if (absl::Status status = agent.Init(); !status.ok()) {
    std::fprintf(stderr, "tokenwatch-agent: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  agent.Run();
  g_agent = nullptr;
  return 0;
}
