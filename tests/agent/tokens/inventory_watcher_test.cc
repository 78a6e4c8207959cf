#include <fcntl.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "agent/tokens/inventory.h"
#include "agent/tokens/redact.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/agent/tokens/kubelet_fixture.h"

namespace tokenwatch::tokens {
namespace {

using fixture::MakeFakeJwt;
using fixture::TempDir;

constexpr char kPod[] = "0b5c9a3e-7f2d-4a61-9d1e-3c2b1a0f9e8d";
constexpr char kVolume[] = "kube-api-access-x7k2p";
constexpr absl::Duration kPromise = absl::Seconds(2);

// Collects deltas from the watcher thread; the test thread waits on conditions over them.
class DeltaLog {
 public:
  void Add(const InventoryDelta& d) {
    absl::MutexLock lock(&mu_);
    for (const TokenInfo& t : d.added) added_.push_back(t);
    for (const TokenInfo& t : d.removed) removed_.push_back(t);
    ++calls_;
  }
  // Waits until `pred` holds or `timeout` passes; returns whether it held.
  bool WaitFor(std::function<bool(const std::vector<TokenInfo>& added,
                                  const std::vector<TokenInfo>& removed)>
                   pred,
               absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pred(added_, removed_); };
    return mu_.AwaitWithTimeout(absl::Condition(&cond), timeout);
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  absl::Mutex mu_;
  std::vector<TokenInfo> added_ ABSL_GUARDED_BY(mu_);
  std::vector<TokenInfo> removed_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
};

bool HasDigest(const std::vector<TokenInfo>& v, const std::string& digest) {
  for (const TokenInfo& t : v) {
    if (t.digest == digest) return true;
  }
  return false;
}

class InventoryWatcherTest : public ::testing::Test {
 protected:
  void StartWatcher(absl::Duration interval = absl::Seconds(30)) {
    TokenInventory::Options o;
    o.kubelet_root = tmp_.path();
    inventory_ = std::make_unique<TokenInventory>(o);
    inventory_->Rescan();
    auto w = InventoryWatcher::Start(
        inventory_.get(), [this](const InventoryDelta& d) { log_.Add(d); }, interval);
    ASSERT_TRUE(w.ok()) << w.status();
    watcher_ = *std::move(w);
  }
  const std::string& root() { return tmp_.path(); }

  TempDir tmp_;
  DeltaLog log_;
  std::unique_ptr<TokenInventory> inventory_;
  std::unique_ptr<InventoryWatcher> watcher_;
};

// The kubelet root has no pods/ yet: every level (pods, the pod, volumes, the plugin dir, the
// volume) appears after the watcher starts, and the token must still be found by events alone
// (the periodic rescan is set far beyond the deadline).
TEST_F(InventoryWatcherTest, SeesPodCreationWithinTwoSeconds) {
  StartWatcher(absl::Hours(1));
  std::string jwt = MakeFakeJwt();
  ASSERT_TRUE(fixture::WriteProjectedVolume(root(), kPod, kVolume, {{"token", jwt}}).ok());
  std::string digest = TokenDigest(jwt);
  EXPECT_TRUE(log_.WaitFor([&](const auto& added, const auto&) { return HasDigest(added, digest); },
                           kPromise));
  EXPECT_TRUE(inventory_->LookupDigest(digest).has_value());
}

TEST_F(InventoryWatcherTest, SeesRotationWithinTwoSeconds) {
  std::string old_jwt = MakeFakeJwt();
  ASSERT_TRUE(fixture::WriteProjectedVolume(root(), kPod, kVolume, {{"token", old_jwt}}).ok());
  StartWatcher(absl::Hours(1));
  ASSERT_TRUE(inventory_->LookupDigest(TokenDigest(old_jwt)).has_value());

  std::string new_jwt = MakeFakeJwt();
  ASSERT_TRUE(fixture::RotateProjectedVolume(root(), kPod, kVolume, {{"token", new_jwt}}).ok());
  EXPECT_TRUE(log_.WaitFor(
      [&](const auto& added, const auto& removed) {
        return HasDigest(added, TokenDigest(new_jwt)) && HasDigest(removed, TokenDigest(old_jwt));
      },
      kPromise));
  EXPECT_FALSE(inventory_->LookupDigest(TokenDigest(old_jwt)).has_value());
}

TEST_F(InventoryWatcherTest, SeesRepeatedRotationsOfTheSameVolume) {
  ASSERT_TRUE(
      fixture::WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}}).ok());
  StartWatcher(absl::Hours(1));
  for (int i = 0; i < 3; ++i) {
    std::string jwt = MakeFakeJwt();
    ASSERT_TRUE(fixture::RotateProjectedVolume(root(), kPod, kVolume, {{"token", jwt}}).ok());
    EXPECT_TRUE(log_.WaitFor(
        [&](const auto& added, const auto&) { return HasDigest(added, TokenDigest(jwt)); },
        kPromise))
        << "rotation " << i;
  }
  EXPECT_EQ(inventory_->Snapshot().size(), 1u);
}

TEST_F(InventoryWatcherTest, SeesPodDeletionWithinTwoSeconds) {
  std::string jwt = MakeFakeJwt();
  ASSERT_TRUE(fixture::WriteProjectedVolume(root(), kPod, kVolume, {{"token", jwt}}).ok());
  StartWatcher(absl::Hours(1));
  ASSERT_TRUE(fixture::RemovePod(root(), kPod).ok());
  EXPECT_TRUE(log_.WaitFor(
      [&](const auto&, const auto& removed) { return HasDigest(removed, TokenDigest(jwt)); },
      kPromise));
  EXPECT_TRUE(inventory_->Snapshot().empty());
}

// A change no watched directory reports (a file rewritten in place inside the timestamped dir)
// is still caught by the periodic rescan.
TEST_F(InventoryWatcherTest, PeriodicRescanCatchesUnwatchedChanges) {
  auto ts = fixture::WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}});
  ASSERT_TRUE(ts.ok());
  StartWatcher(absl::Milliseconds(300));
  std::string jwt = MakeFakeJwt();
  int fd = open(absl::StrCat(*ts, "/token").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, jwt.data(), jwt.size()), static_cast<ssize_t>(jwt.size()));
  close(fd);
  EXPECT_TRUE(log_.WaitFor(
      [&](const auto& added, const auto&) { return HasDigest(added, TokenDigest(jwt)); },
      kPromise));
}

TEST_F(InventoryWatcherTest, StopEndsCallbacks) {
  StartWatcher(absl::Milliseconds(50));
  watcher_->Stop();
  watcher_->Stop();  // idempotent
  int before = log_.calls();
  ASSERT_TRUE(
      fixture::WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}}).ok());
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_EQ(log_.calls(), before);
}

TEST_F(InventoryWatcherTest, DropsWatchesOfDeletedPods) {
  ASSERT_TRUE(
      fixture::WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}}).ok());
  StartWatcher(absl::Hours(1));
  size_t with_pod = watcher_->watch_count();
  // root, pods, pod, volumes, projected plugin dir, volume dir.
  EXPECT_EQ(with_pod, 6u);
  ASSERT_TRUE(fixture::RemovePod(root(), kPod).ok());
  ASSERT_TRUE(
      log_.WaitFor([](const auto&, const auto& removed) { return !removed.empty(); }, kPromise));
  EXPECT_EQ(watcher_->watch_count(), 2u);
}

TEST(InventoryWatcher, RejectsMissingInventory) {
  EXPECT_FALSE(InventoryWatcher::Start(nullptr, [](const InventoryDelta&) {}).ok());
}

}  // namespace
}  // namespace tokenwatch::tokens
