#include "agent/k8s/apiserver.h"

#include <sys/socket.h>

#include <fstream>

#include "gtest/gtest.h"

namespace tokenwatch::k8s {
namespace {

std::string Write(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ParseIpEndpoint, IPv4AndIPv6) {
  auto v4 = ParseIpEndpoint("10.96.0.1:443");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->family, AF_INET);
  EXPECT_EQ(v4->port, 443);
  EXPECT_EQ(v4->text, "10.96.0.1:443");
  auto v6 = ParseIpEndpoint("[fd00:ec2::254]:80");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->family, AF_INET6);
  EXPECT_EQ(v6->text, "[fd00:ec2::254]:80");
  EXPECT_FALSE(ParseIpEndpoint("api.example:443").ok());
  EXPECT_FALSE(ParseIpEndpoint("10.0.0.1").ok());
}

TEST(KubeconfigServer, TakesTheClustersServerWithItsPort) {
  std::string path = Write("kubelet.conf",
                           "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
                           "    certificate-authority-data: AAAA\n"
                           "    server: https://10.0.0.5:6443\n  name: default\n");
  auto server = KubeconfigServer(path);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(*server, "10.0.0.5:6443");
  path = Write("noport.conf", "clusters:\n- cluster:\n    server: https://api.internal\n");
  EXPECT_EQ(*KubeconfigServer(path), "api.internal:443");
  EXPECT_FALSE(KubeconfigServer(Write("empty.conf", "kind: Config\n")).ok());
}

TEST(ApiServerDiscovery, FlagsWinElseEnvironmentAndKubeconfig) {
  std::string kc = Write("kc.conf", "clusters:\n- cluster:\n    server: https://10.0.0.5:6443\n");
  ApiServerDiscovery::Options o;
  o.service_host = "10.96.0.1";
  o.service_port = "443";
  o.kubeconfigs = {kc, "/nonexistent/kubeconfig"};
  auto found = ApiServerDiscovery(o).Resolve();
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].text, "10.96.0.1:443");
  EXPECT_EQ(found[1].text, "10.0.0.5:6443");
  o.flags = {"127.0.0.1:8443"};
  found = ApiServerDiscovery(o).Resolve();
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].text, "127.0.0.1:8443");
}

TEST(ApiServerDiscovery, ResolvesHostNames) {
  ApiServerDiscovery::Options o;
  o.flags = {"localhost:6443"};
  o.kubeconfigs = {};
  auto found = ApiServerDiscovery(o).Resolve();
  ASSERT_FALSE(found.empty());
  EXPECT_EQ(found[0].port, 6443);
}

TEST(InRanges, MatchesPrefixesOfBothFamilies) {
  const auto& ranges = DefaultClusterRanges();
  EXPECT_TRUE(InRanges(*ParseIpEndpoint("10.96.0.1:443"), ranges));
  EXPECT_TRUE(InRanges(*ParseIpEndpoint("169.254.169.254:80"), ranges));
  EXPECT_TRUE(InRanges(*ParseIpEndpoint("[fd00:ec2::254]:80"), ranges));
  EXPECT_FALSE(InRanges(*ParseIpEndpoint("192.0.2.10:80"), ranges));
  EXPECT_FALSE(InRanges(*ParseIpEndpoint("[2001:db8::1]:443"), ranges));
  EXPECT_TRUE(InRanges(*ParseIpEndpoint("172.31.255.1:1"), {"172.16.0.0/12"}));
  EXPECT_FALSE(InRanges(*ParseIpEndpoint("172.32.0.1:1"), {"172.16.0.0/12"}));
}

}  // namespace
}  // namespace tokenwatch::k8s
