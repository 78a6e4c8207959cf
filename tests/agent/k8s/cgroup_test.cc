#include "agent/k8s/cgroup.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tokenwatch::k8s {
namespace {

constexpr char kUid[] = "0b5c9a3e-7f2d-4a61-9d1e-3c2b1a0f9e8d";
constexpr char kUidUnderscored[] = "0b5c9a3e_7f2d_4a61_9d1e_3c2b1a0f9e8d";
constexpr char kId[] = "4f1c2a0b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

ContainerRef MustParse(const std::string& path) {
  std::optional<ContainerRef> ref = ParseCgroupPath(path);
  EXPECT_TRUE(ref.has_value()) << path;
  return ref.value_or(ContainerRef{});
}

TEST(ParseCgroupPath, CgroupfsBurstable) {
  ContainerRef r = MustParse(absl::StrCat("/kubepods/burstable/pod", kUid, "/", kId));
  EXPECT_EQ(r.pod_uid, kUid);
  EXPECT_EQ(r.container_id, kId);
  EXPECT_EQ(r.runtime, "");
  EXPECT_EQ(r.qos, "burstable");
  EXPECT_FALSE(r.runtime_helper);
}

TEST(ParseCgroupPath, CgroupfsGuaranteedHasNoQosLevel) {
  ContainerRef r = MustParse(absl::StrCat("/kubepods/pod", kUid, "/", kId));
  EXPECT_EQ(r.pod_uid, kUid);
  EXPECT_EQ(r.container_id, kId);
  EXPECT_EQ(r.qos, "guaranteed");
}

TEST(ParseCgroupPath, CgroupfsBestEffort) {
  ContainerRef r = MustParse(absl::StrCat("/kubepods/besteffort/pod", kUid, "/", kId));
  EXPECT_EQ(r.qos, "besteffort");
}

TEST(ParseCgroupPath, CgroupfsCrioPrefix) {
  ContainerRef r = MustParse(absl::StrCat("/kubepods/burstable/pod", kUid, "/crio-", kId));
  EXPECT_EQ(r.container_id, kId);
  EXPECT_EQ(r.runtime, "crio");
}

TEST(ParseCgroupPath, PodLevelCgroupHasNoContainer) {
  ContainerRef r = MustParse(absl::StrCat("/kubepods/burstable/pod", kUid));
  EXPECT_EQ(r.pod_uid, kUid);
  EXPECT_EQ(r.container_id, "");
  ContainerRef s =
      MustParse(absl::StrCat("/kubepods.slice/kubepods-pod", kUidUnderscored, ".slice"));
  EXPECT_EQ(s.pod_uid, kUid);
  EXPECT_EQ(s.container_id, "");
  EXPECT_EQ(s.qos, "guaranteed");
}

TEST(ParseCgroupPath, SystemdContainerdRestoresDashes) {
  ContainerRef r =
      MustParse(absl::StrCat("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod",
                             kUidUnderscored, ".slice/cri-containerd-", kId, ".scope"));
  EXPECT_EQ(r.pod_uid, kUid);
  EXPECT_EQ(r.container_id, kId);
  EXPECT_EQ(r.runtime, "containerd");
  EXPECT_EQ(r.qos, "burstable");
}

TEST(ParseCgroupPath, SystemdGuaranteed) {
  ContainerRef r = MustParse(absl::StrCat("/kubepods.slice/kubepods-pod", kUidUnderscored,
                                          ".slice/cri-containerd-", kId, ".scope"));
  EXPECT_EQ(r.pod_uid, kUid);
  EXPECT_EQ(r.qos, "guaranteed");
}

TEST(ParseCgroupPath, SystemdCrioAndDocker) {
  std::string pod =
      absl::StrCat("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod",
                   kUidUnderscored, ".slice/");
  ContainerRef crio = MustParse(absl::StrCat(pod, "crio-", kId, ".scope"));
  EXPECT_EQ(crio.runtime, "crio");
  EXPECT_EQ(crio.container_id, kId);
  EXPECT_EQ(crio.qos, "besteffort");
  ContainerRef docker = MustParse(absl::StrCat(pod, "docker-", kId, ".scope"));
  EXPECT_EQ(docker.runtime, "docker");
  EXPECT_EQ(docker.container_id, kId);
}

TEST(ParseCgroupPath, CrioConmonIsNotAContainerProcess) {
  ContainerRef r =
      MustParse(absl::StrCat("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod",
                             kUidUnderscored, ".slice/crio-conmon-", kId, ".scope"));
  EXPECT_EQ(r.pod_uid, kUid);
  EXPECT_TRUE(r.runtime_helper);
  EXPECT_EQ(r.container_id, "");
  EXPECT_EQ(r.conmon_of, kId);
  EXPECT_EQ(r.runtime, "crio");
}

TEST(ParseCgroupPath, NestedUnderAPrefix) {
  // kind: the kubelet's cgroup root is /kubelet, so every slice name gains "kubelet-".
  ContainerRef kind = MustParse(
      absl::StrCat("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
                   "kubelet-kubepods-burstable-pod",
                   kUidUnderscored, ".slice/cri-containerd-", kId, ".scope"));
  EXPECT_EQ(kind.pod_uid, kUid);
  EXPECT_EQ(kind.container_id, kId);
  EXPECT_EQ(kind.qos, "burstable");
  ContainerRef sys = MustParse(
      absl::StrCat("/system.slice/containerd.service/kubepods/burstable/pod", kUid, "/", kId));
  EXPECT_EQ(sys.pod_uid, kUid);
  EXPECT_EQ(sys.container_id, kId);
}

TEST(ParseCgroupPath, CgroupBelowTheContainerBelongsToIt) {
  ContainerRef r = MustParse(absl::StrCat("/kubepods.slice/kubepods-pod", kUidUnderscored,
                                          ".slice/crio-", kId, ".scope/container/init.scope"));
  EXPECT_EQ(r.container_id, kId);
}

TEST(ParseCgroupPath, UppercaseIdIsNormalized) {
  std::string upper = kId;
  for (char& c : upper) c = static_cast<char>(toupper(c));
  ContainerRef r = MustParse(absl::StrCat("/kubepods/pod", kUid, "/", upper));
  EXPECT_EQ(r.container_id, kId);
}

TEST(ParseCgroupPath, StaticPodUidWithoutDashes) {
  ContainerRef r =
      MustParse("/kubepods/burstable/pod6c1e8d5ba4f1e7c7b1d0c5a3e2f4b6a8/" + std::string(kId));
  EXPECT_EQ(r.pod_uid, "6c1e8d5ba4f1e7c7b1d0c5a3e2f4b6a8");
}

TEST(ParseCgroupPath, HostCgroupsAreNotPods) {
  for (const std::string& path :
       {std::string("/"), std::string(""), std::string("/init.scope"),
        std::string("/system.slice/containerd.service"),
        std::string("/system.slice/kubelet.service"),
        std::string("/user.slice/user-1000.slice/session-1.scope"),
        absl::StrCat("/system.slice/docker-", kId, ".scope"), absl::StrCat("/docker/", kId),
        std::string("/kubepods"), std::string("/kubepods/burstable"),
        std::string("/kubepods.slice/kubepods-burstable.slice"),
        std::string("/machine.slice/libpod-abc.scope"),
        absl::StrCat("/podman/pod", kUid),          // a pod dir not under kubepods
        std::string("/kubepods/burstable/podman"),  // not a UID
        std::string("/kubepods.slice/kubepods-burstable-podXYZ.slice")}) {
    EXPECT_FALSE(ParseCgroupPath(path).has_value()) << path;
  }
}

}  // namespace
}  // namespace tokenwatch::k8s
