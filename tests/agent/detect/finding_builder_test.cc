#include "agent/detect/finding_builder.h"

#include "agent/export/json_lines.h"
#include "gtest/gtest.h"

namespace tokenwatch::detect {
namespace {

TokenRead SampleRead() {
  TokenRead read;
  read.time = absl::FromUnixNanos(1800000000123456789);
  read.token.id = tokens::FileId{(254ull << 20) | 3, 777};
  read.token.pod_uid = "11111111-2222-3333-4444-555555555555";
  read.token.kind = tokens::TokenKind::kProjected;
  read.token.host_path = "/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/v/..t/token";
  read.token.claims.namespace_name = "shop";
  read.token.claims.pod_name = "web-0";
  read.token.claims.service_account = "web";
  read.token.claims.expiry = absl::FromUnixSeconds(1800003600);
  read.token.claims.audiences = {"https://kubernetes.default.svc"};
  process::ProcessView& p = read.lineage.process;
  p.pid = 10;
  p.ppid = 9;
  p.start_boottime_ns = 5000000000;  // 500 clock ticks
  p.start_time = absl::FromUnixSeconds(1799999999);
  p.exe = "/bin/busybox";
  p.comm = "cat";
  p.argv = {"cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"};
  k8s::ContainerRef ref;
  ref.pod_uid = read.token.pod_uid;
  ref.container_id = std::string(64, 'c');
  ref.runtime = "containerd";
  p.container = ref;
  process::ProcessView parent = p;
  parent.pid = 9;
  parent.comm = "sh";
  read.lineage.ancestors = {parent};
  read.syscall = "openat2";
  read.flags = 0100000;  // the kernel's O_LARGEFILE, set on every 64-bit open
  return read;
}

TEST(FindingBuilder, FillsEveryFieldTheIssueKnows) {
  v1::Finding f = BuildTokenReadFinding("node-1", "tracepoint", SampleRead(), "TW001",
                                        "token-read-unexpected", v1::SEVERITY_HIGH, "summary");
  EXPECT_EQ(f.id().size(), 36u);
  EXPECT_EQ(f.node(), "node-1");
  EXPECT_EQ(f.count(), 1u);
  EXPECT_EQ(f.time().seconds(), 1800000000);
  EXPECT_EQ(f.time().nanos(), 123456789);
  EXPECT_EQ(f.mitre(0), "T1528");
  EXPECT_EQ(f.token().owner().namespace_(), "shop");
  EXPECT_EQ(f.token().owner().name(), "web-0");
  EXPECT_EQ(f.token().service_account(), "web");
  EXPECT_EQ(f.token().kind(), v1::TOKEN_KIND_PROJECTED);
  EXPECT_EQ(f.token().device(), "254:3");
  EXPECT_EQ(f.token().inode(), 777u);
  EXPECT_EQ(f.token().expiry().seconds(), 1800003600);
  EXPECT_EQ(f.process().exec_id(), "node-1:500:10");
  EXPECT_TRUE(f.process().in_container());
  EXPECT_EQ(f.process().pod().namespace_(), "shop");
  EXPECT_EQ(f.process().container_id(), std::string(64, 'c'));
  ASSERT_EQ(f.ancestors_size(), 1);
  EXPECT_EQ(f.ancestors(0).comm(), "sh");
  EXPECT_EQ(f.access().syscall(), "openat2");
  EXPECT_EQ(f.access().path(), v1::ACCESS_PATH_SYSCALL);
  EXPECT_EQ(f.access().flags_text(), "O_RDONLY|O_LARGEFILE");
  EXPECT_EQ(f.hook_mode(), "tracepoint");
}

TEST(FindingBuilder, HostProcessHasNoPod) {
  TokenRead read = SampleRead();
  read.lineage.process.container.reset();
  v1::Finding f = BuildTokenReadFinding("n", "tracepoint", read, "TW003", "token-read-host",
                                        v1::SEVERITY_HIGH, "s");
  EXPECT_FALSE(f.process().in_container());
  EXPECT_FALSE(f.process().has_pod());
}

TEST(FindingBuilder, JsonIsTheProtoMappingWithCamelCaseNames) {
  v1::Finding f = BuildTokenReadFinding("n", "tracepoint", SampleRead(), "TW001",
                                        "token-read-unexpected", v1::SEVERITY_HIGH, "s");
  auto json = exporting::FindingToJson(f);
  ASSERT_TRUE(json.ok());
  EXPECT_NE(json->find("\"ruleId\":\"TW001\""), std::string::npos);
  EXPECT_NE(json->find("\"severity\":\"SEVERITY_HIGH\""), std::string::npos);
  EXPECT_NE(json->find("\"serviceAccount\":\"web\""), std::string::npos);
  EXPECT_EQ(json->find('\n'), std::string::npos);
}

TEST(OpenFlagsText, SpellsAccessModeAndBits) {
  EXPECT_EQ(OpenFlagsText(0), "O_RDONLY");
  EXPECT_EQ(OpenFlagsText(02 | 0400000 | 0100000), "O_RDWR|O_LARGEFILE|O_NOFOLLOW");
}

}  // namespace
}  // namespace tokenwatch::detect
