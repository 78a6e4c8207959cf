#include "agent/main/config.h"

#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace tokenwatch::agent {
namespace {

std::string WriteFile(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

absl::StatusOr<AgentConfig> Parse(std::vector<std::string> args) {
  bool help = false, version = false;
  return ParseAgentCommandLine(args, &help, &version);
}

TEST(AgentConfig, DefaultsMatchTheContract) {
  auto c = Parse({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kubelet_root, "/var/lib/kubelet");
  EXPECT_EQ(c->findings_out, "-");
  EXPECT_EQ(c->metrics_address, "0.0.0.0:9750");
  EXPECT_EQ(c->state_dir, "/var/lib/tokenwatch");
  EXPECT_EQ(c->hook_mode, "auto");
  EXPECT_TRUE(c->collector.empty());
  EXPECT_FALSE(c->node_name.empty());
}

TEST(AgentConfig, FlagsInBothSpellings) {
  auto c = Parse({"--kubelet-root", "/k", "--collector=127.0.0.1:9760", "--apiserver",
                  "10.0.0.1:443", "--apiserver=[fd00::1]:6443", "--hook-mode", "tracepoint"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kubelet_root, "/k");
  EXPECT_EQ(c->collector, "127.0.0.1:9760");
  EXPECT_EQ(c->apiservers, (std::vector<std::string>{"10.0.0.1:443", "[fd00::1]:6443"}));
  EXPECT_EQ(c->hook_mode, "tracepoint");
}

TEST(AgentConfig, BadFlagsAreOneLineNamingTheFlag) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--hook-mode", "magic"}, {"--nope", "1"}, {"--collector", "no-port"},
           {"--metrics-address"}, {"stray"}}) {
    auto c = Parse(args);
    ASSERT_FALSE(c.ok()) << args[0];
    EXPECT_EQ(c.status().message().find('\n'), std::string::npos);
  }
  EXPECT_NE(Parse({"--hook-mode", "magic"}).status().message().find("--hook-mode"),
            std::string::npos);
  EXPECT_NE(Parse({"--nope", "1"}).status().message().find("unknown flag --nope"),
            std::string::npos);
}

TEST(AgentConfig, FileSetsKeysAndFlagsWin) {
  std::string path = WriteFile("agent.yaml",
                               "kubelet_root: /from-file\n"
                               "node_name: file-node\n"
                               "dedup_window: 30s\n"
                               "apiserver:\n  - 10.0.0.1:443\n"
                               "host_allowed_executables: [kubelet, /usr/bin/containerd]\n");
  auto c = Parse({"--config", path, "--node-name", "flag-node"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kubelet_root, "/from-file");
  EXPECT_EQ(c->node_name, "flag-node");
  EXPECT_EQ(c->dedup_window, absl::Seconds(30));
  EXPECT_EQ(c->apiservers, std::vector<std::string>{"10.0.0.1:443"});
  EXPECT_EQ(c->host_allowed_executables.size(), 2u);
}

TEST(AgentConfig, BadFileNamesFileLineAndKey) {
  std::string path = WriteFile("bad-key.yaml", "kubelet_root: /k\nkubelet_rot: /x\n");
  auto c = Parse({"--config", path});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(path + ":2: unknown key 'kubelet_rot'"), std::string::npos)
      << c.status().message();

  path = WriteFile("bad-type.yaml", "node_name: n\nhook_mode: [a, b]\n");
  c = Parse({"--config", path});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(path + ":2: key 'hook_mode'"), std::string::npos)
      << c.status().message();

  path = WriteFile("bad-value.yaml", "dedup_window: soon\n");
  c = Parse({"--config", path});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("key 'dedup_window': 'soon' is not a duration"),
            std::string::npos)
      << c.status().message();

  path = WriteFile("bad-yaml.yaml", "a: [\n");
  c = Parse({"--config", path});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(path), std::string::npos);

  c = Parse({"--config", "/nonexistent/tokenwatch.yaml"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(
                "/nonexistent/tokenwatch.yaml: cannot read the file: No such file or directory"),
            std::string::npos)
      << c.status().message();
}

TEST(AgentConfig, ADirectoryAsConfigIsAnErrorNotACrash) {
  // yaml-cpp reads a directory as a stream that throws std::ios failures.
  std::string dir = ::testing::TempDir();
  auto c = Parse({"--config", dir});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("cannot read the file: Is a directory"), std::string::npos)
      << c.status().message();
  EXPECT_EQ(c.status().message().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace tokenwatch::agent
