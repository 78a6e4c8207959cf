#include "agent/detect/workload.h"

#include "gtest/gtest.h"

namespace tokenwatch::detect {
namespace {

TEST(WorkloadName, StripsControllerSuffixes) {
  // Deployment: <name>-<pod-template-hash>-<suffix>.
  EXPECT_EQ(WorkloadName("coredns-5d78c9869d-x7k2p"), "coredns");
  EXPECT_EQ(WorkloadName("payments-api-7d9c8b6f4-zq2wn"), "payments-api");
  // DaemonSet and Job: <name>-<suffix>.
  EXPECT_EQ(WorkloadName("kube-proxy-h8t5w"), "kube-proxy");
  EXPECT_EQ(WorkloadName("db-migrate-9xk4m"), "db-migrate");
  // CronJob: <name>-<scheduled minutes>-<suffix>.
  EXPECT_EQ(WorkloadName("backup-28912345-bq7rl"), "backup");
  // StatefulSet: <name>-<ordinal>.
  EXPECT_EQ(WorkloadName("web-0"), "web");
  EXPECT_EQ(WorkloadName("kafka-12"), "kafka");
  // Static pod: <name>-<node>.
  EXPECT_EQ(WorkloadName("kube-apiserver-node-1", "node-1"), "kube-apiserver");
}

TEST(WorkloadName, KeepsNamesThatAreNotGenerated) {
  EXPECT_EQ(WorkloadName("nginx"), "nginx");
  // "server" has vowels: not a generated suffix.
  EXPECT_EQ(WorkloadName("web-server"), "web-server");
  // A leading zero is not an ordinal.
  EXPECT_EQ(WorkloadName("release-007"), "release-007");
  // A short consonant word before a DaemonSet suffix is part of the name.
  EXPECT_EQ(WorkloadName("kube-cni-h8t5w"), "kube-cni");
}

TEST(WorkloadOf, UsesClaimsAndTheEntrypoint) {
  TokenRead read;
  read.token.pod_uid = "uid-1";
  read.token.claims.namespace_name = "payments";
  read.token.claims.pod_name = "api-7d9c8b6f4-zq2wn";
  read.token.claims.service_account = "api";
  read.entrypoint_exe = "/app/server";
  WorkloadKey key = WorkloadOf(read);
  EXPECT_EQ(key.namespace_name, "payments");
  EXPECT_EQ(key.workload, "api");
  EXPECT_EQ(key.container, "/app/server");
  EXPECT_EQ(key.service_account, "api");
  EXPECT_EQ(key.Id(), "payments/api /app/server");
  // Legacy tokens name no pod: the pod uid stands in.
  read.token.claims.pod_name.clear();
  EXPECT_EQ(WorkloadOf(read).workload, "pod-uid-1");
}

}  // namespace
}  // namespace tokenwatch::detect
