#include "agent/process/lineage.h"

#include "gtest/gtest.h"

namespace tokenwatch::process {
namespace {

constexpr uint32_t kContainerNs = 4026532500;
constexpr uint32_t kHostNs = 4026531836;

ProcessView P(const std::string& comm, uint32_t ns_pid, uint32_t pidns, bool in_container) {
  ProcessView v;
  v.comm = comm;
  v.ns_pid = ns_pid;
  v.pidns = pidns;
  if (in_container) {
    k8s::ContainerRef ref;
    ref.pod_uid = "uid";
    ref.container_id = std::string(64, 'a');
    v.container = ref;
  }
  return v;
}

TEST(MarkExecSession, ChainReachingTheRuntimeWithoutInitIsAnExecSession) {
  // cat <- sh <- sh <- runc (host)
  Lineage l;
  l.process = P("cat", 12, kContainerNs, true);
  l.ancestors = {P("sh", 11, kContainerNs, true), P("sh", 10, kContainerNs, true),
                 P("runc", 5000, kHostNs, false)};
  MarkExecSession(&l);
  EXPECT_TRUE(l.process.exec_session);
  EXPECT_TRUE(l.ancestors[0].exec_session);
  EXPECT_TRUE(l.ancestors[1].exec_session);
  EXPECT_FALSE(l.ancestors[2].exec_session);
}

TEST(MarkExecSession, DescendantOfTheEntrypointIsNot) {
  // cat <- sh <- entrypoint (pid 1) <- containerd-shim (host)
  Lineage l;
  l.process = P("cat", 7, kContainerNs, true);
  l.ancestors = {P("sh", 6, kContainerNs, true), P("nginx", 1, kContainerNs, true),
                 P("containerd-shim", 900, kHostNs, false)};
  MarkExecSession(&l);
  EXPECT_FALSE(l.process.exec_session);
  EXPECT_FALSE(l.ancestors[0].exec_session);
}

TEST(MarkExecSession, TheEntrypointItselfIsNot) {
  Lineage l;
  l.process = P("controller", 1, kContainerNs, true);
  l.ancestors = {P("runc", 5000, kHostNs, false)};
  MarkExecSession(&l);
  EXPECT_FALSE(l.process.exec_session);
}

TEST(MarkExecSession, UnknownWhenTheChainNeverLeavesTheContainer) {
  // The ancestry was cut before the boundary: no verdict rather than a guess.
  Lineage l;
  l.process = P("cat", 12, kContainerNs, true);
  l.ancestors = {P("sh", 11, kContainerNs, true)};
  MarkExecSession(&l);
  EXPECT_FALSE(l.process.exec_session);
}

TEST(MarkExecSession, HostProcessesAreNeverExecSessions) {
  Lineage l;
  l.process = P("cat", 300, kHostNs, false);
  l.ancestors = {P("bash", 200, kHostNs, false), P("sshd", 100, kHostNs, false)};
  MarkExecSession(&l);
  EXPECT_FALSE(l.process.exec_session);
}

}  // namespace
}  // namespace tokenwatch::process
