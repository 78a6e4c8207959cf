#include "agent/tokens/inventory.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/tokens/redact.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/agent/tokens/kubelet_fixture.h"

namespace tokenwatch::tokens {
namespace {

using fixture::FakeJwtOptions;
using fixture::MakeFakeJwt;
using fixture::RemovePod;
using fixture::RotateProjectedVolume;
using fixture::TempDir;
using fixture::WriteProjectedVolume;
using fixture::WriteSecretVolume;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr char kPod[] = "0b5c9a3e-7f2d-4a61-9d1e-3c2b1a0f9e8d";
constexpr char kPod2[] = "7a1b2c3d-0000-4000-8000-123456789abc";
constexpr char kVolume[] = "kube-api-access-x7k2p";
constexpr char kCaCrt[] = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

std::string RealPath(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) != nullptr ? std::string(buf) : "";
}

FileId IdOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return FileIdFromStat(st);
}

class TokenInventoryTest : public ::testing::Test {
 protected:
  TokenInventory::Options Opts() {
    TokenInventory::Options o;
    o.kubelet_root = tmp_.path();
    return o;
  }
  const std::string& root() { return tmp_.path(); }

  TempDir tmp_;
};

TEST(FileIdFromStat, UsesTheKernelsDeviceEncoding) {
  struct stat st = {};
  st.st_dev = makedev(259, 3);  // an NVMe partition: glibc and the kernel encode it differently
  st.st_ino = 42;
  FileId id = FileIdFromStat(st);
  EXPECT_EQ(id.dev, (uint64_t{259} << 20) | 3);
  EXPECT_EQ(id.ino, 42u);
  st.st_dev = makedev(0, 27);
  EXPECT_EQ(FileIdFromStat(st).dev, 27u);
}

TEST_F(TokenInventoryTest, FindsTokenInProjectedVolume) {
  std::string jwt = MakeFakeJwt();
  auto ts = WriteProjectedVolume(
      root(), kPod, kVolume, {{"token", jwt + "\n"}, {"ca.crt", kCaCrt}, {"namespace", "default"}});
  ASSERT_TRUE(ts.ok()) << ts.status();
  TokenInventory inv(Opts());
  InventoryDelta delta = inv.Rescan();
  ASSERT_THAT(delta.added, SizeIs(1));
  EXPECT_THAT(delta.removed, IsEmpty());
  const TokenInfo& t = delta.added[0];
  EXPECT_EQ(t.pod_uid, kPod);
  EXPECT_EQ(t.volume, kVolume);
  EXPECT_EQ(t.file_name, "token");
  EXPECT_EQ(t.kind, TokenKind::kProjected);
  EXPECT_EQ(t.claims.pod_name, "web-0");
  EXPECT_EQ(t.claims.namespace_name, "default");
  // The digest is of the token, without the trailing newline, as it would appear in an argv.
  EXPECT_EQ(t.digest, TokenDigest(jwt));

  ASSERT_TRUE(inv.Lookup(t.id).has_value());
  EXPECT_EQ(inv.LookupDigest(TokenDigest(jwt))->id, t.id);
  EXPECT_FALSE(inv.LookupDigest(TokenDigest("something else")).has_value());
  EXPECT_THAT(inv.Snapshot(), SizeIs(1));
  InventoryStats s = inv.stats();
  EXPECT_EQ(s.scans, 1u);
  EXPECT_EQ(s.tokens, 1u);
  EXPECT_EQ(s.added, 1u);
  EXPECT_EQ(s.malformed, 0u);
}

TEST_F(TokenInventoryTest, ResolvesDataSymlinkToTheRealFile) {
  auto ts = WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}});
  ASSERT_TRUE(ts.ok()) << ts.status();
  TokenInventory inv(Opts());
  InventoryDelta delta = inv.Rescan();
  ASSERT_THAT(delta.added, SizeIs(1));
  const TokenInfo& t = delta.added[0];
  std::string visible = absl::StrCat(fixture::VolumeDir(root(), kPod, kVolume), "/token");
  // The visible name is a symlink chain; the inventory holds the file at its end.
  struct stat lst;
  ASSERT_EQ(lstat(visible.c_str(), &lst), 0);
  ASSERT_TRUE(S_ISLNK(lst.st_mode));
  EXPECT_EQ(t.host_path, RealPath(absl::StrCat(*ts, "/token")));
  EXPECT_TRUE(absl::StrContains(t.host_path, "/.."));
  EXPECT_FALSE(absl::StrContains(t.host_path, "..data"));
  EXPECT_EQ(t.id, IdOf(visible));
  EXPECT_EQ(t.id, IdOf(t.host_path));
}

TEST_F(TokenInventoryTest, FindsLegacyTokenInSecretVolume) {
  FakeJwtOptions o;
  o.legacy = true;
  o.issuer = "kubernetes/serviceaccount";
  o.service_account = "builder";
  o.expiry.reset();
  auto ts = WriteSecretVolume(root(), kPod, "builder-token-x7k2p",
                              {{"token", MakeFakeJwt(o)}, {"ca.crt", kCaCrt}, {"namespace", "ci"}});
  ASSERT_TRUE(ts.ok()) << ts.status();
  TokenInventory inv(Opts());
  InventoryDelta delta = inv.Rescan();
  ASSERT_THAT(delta.added, SizeIs(1));
  EXPECT_EQ(delta.added[0].kind, TokenKind::kSecret);
  EXPECT_EQ(delta.added[0].volume, "builder-token-x7k2p");
  EXPECT_TRUE(delta.added[0].claims.legacy);
  EXPECT_EQ(delta.added[0].claims.service_account, "builder");
}

TEST_F(TokenInventoryTest, FindsTokensUnderCustomNamesAndSubdirectories) {
  FakeJwtOptions azure;
  azure.audiences = {"api://AzureADTokenExchange"};
  ASSERT_TRUE(WriteProjectedVolume(root(), kPod, "azure-identity-token",
                                   {{"azure-identity-token", MakeFakeJwt(azure)}})
                  .ok());
  ASSERT_TRUE(WriteProjectedVolume(root(), kPod, "vault",
                                   {{"a/b/vault-token", MakeFakeJwt()}, {"a/readme", "hi"}})
                  .ok());
  TokenInventory inv(Opts());
  InventoryDelta delta = inv.Rescan();
  ASSERT_THAT(delta.added, SizeIs(2));
  std::vector<std::string> names;
  for (const TokenInfo& t : inv.Snapshot()) names.push_back(t.file_name);
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("azure-identity-token", "a/b/vault-token"));
}

TEST_F(TokenInventoryTest, IgnoresFilesThatAreNotJwts) {
  ASSERT_TRUE(WriteProjectedVolume(root(), kPod, kVolume,
                                   {{"ca.crt", kCaCrt},
                                    {"namespace", "default"},
                                    {"config.json", R"({"a":1})"},
                                    {"big", "eyJ" + std::string(128 * 1024, 'e')}})
                  .ok());
  TokenInventory inv(Opts());
  EXPECT_TRUE(inv.Rescan().empty());
  InventoryStats s = inv.stats();
  EXPECT_EQ(s.tokens, 0u);
  EXPECT_EQ(s.malformed, 0u);
  EXPECT_EQ(s.unreadable, 0u);
}

TEST_F(TokenInventoryTest, CountsMalformedTokensAndSkipsThem) {
  FakeJwtOptions no_k8s;
  no_k8s.kubernetes_claims = false;
  ASSERT_TRUE(WriteProjectedVolume(root(), kPod, kVolume,
                                   {{"token", "eyJhbGciOiJSUzI1NiJ9.garbage!!.x"},
                                    {"oidc-token", MakeFakeJwt(no_k8s)},
                                    {"good", MakeFakeJwt()}})
                  .ok());
  TokenInventory inv(Opts());
  InventoryDelta delta = inv.Rescan();
  ASSERT_THAT(delta.added, SizeIs(1));
  EXPECT_EQ(delta.added[0].file_name, "good");
  EXPECT_EQ(inv.stats().malformed, 2u);
}

TEST_F(TokenInventoryTest, CountsDanglingEntriesAsUnreadable) {
  ASSERT_TRUE(WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}}).ok());
  std::string dangling = absl::StrCat(fixture::VolumeDir(root(), kPod, kVolume), "/gone");
  ASSERT_EQ(symlink("..data/gone", dangling.c_str()), 0);
  TokenInventory inv(Opts());
  EXPECT_THAT(inv.Rescan().added, SizeIs(1));
  EXPECT_EQ(inv.stats().unreadable, 1u);
}

TEST_F(TokenInventoryTest, FollowsKubeletRotation) {
  auto first = WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}});
  ASSERT_TRUE(first.ok()) << first.status();
  TokenInventory inv(Opts());
  ASSERT_THAT(inv.Rescan().added, SizeIs(1));
  FileId old_id = IdOf(absl::StrCat(*first, "/token"));

  std::string new_jwt = MakeFakeJwt();
  auto second = RotateProjectedVolume(root(), kPod, kVolume, {{"token", new_jwt}});
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_NE(*first, *second);
  struct stat gone;
  ASSERT_NE(stat(first->c_str(), &gone), 0) << "the atomic writer removes the old dir";
  FileId new_id = IdOf(absl::StrCat(*second, "/token"));

  InventoryDelta delta = inv.Rescan();
  ASSERT_THAT(delta.added, SizeIs(1));
  ASSERT_THAT(delta.removed, SizeIs(1));
  EXPECT_EQ(delta.added[0].id, new_id);
  EXPECT_EQ(delta.removed[0].id, old_id);
  EXPECT_EQ(delta.added[0].digest, TokenDigest(new_jwt));
  EXPECT_EQ(delta.added[0].host_path, RealPath(absl::StrCat(*second, "/token")));
  EXPECT_FALSE(inv.Lookup(old_id).has_value());
  EXPECT_TRUE(inv.Lookup(new_id).has_value());
  EXPECT_THAT(inv.Snapshot(), SizeIs(1));
}

TEST_F(TokenInventoryTest, UnchangedTreeYieldsEmptyDelta) {
  ASSERT_TRUE(WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}}).ok());
  TokenInventory inv(Opts());
  EXPECT_FALSE(inv.Rescan().empty());
  EXPECT_TRUE(inv.Rescan().empty());
  EXPECT_EQ(inv.stats().scans, 2u);
  EXPECT_EQ(inv.stats().tokens, 1u);
}

TEST_F(TokenInventoryTest, PodDeletionRemovesItsTokens) {
  ASSERT_TRUE(WriteProjectedVolume(root(), kPod, kVolume, {{"token", MakeFakeJwt()}}).ok());
  ASSERT_TRUE(WriteProjectedVolume(root(), kPod2, kVolume, {{"token", MakeFakeJwt()}}).ok());
  TokenInventory inv(Opts());
  ASSERT_THAT(inv.Rescan().added, SizeIs(2));
  ASSERT_TRUE(RemovePod(root(), kPod).ok());
  InventoryDelta delta = inv.Rescan();
  EXPECT_THAT(delta.added, IsEmpty());
  ASSERT_THAT(delta.removed, SizeIs(1));
  EXPECT_EQ(delta.removed[0].pod_uid, kPod);
  ASSERT_THAT(inv.Snapshot(), SizeIs(1));
  EXPECT_EQ(inv.Snapshot()[0].pod_uid, kPod2);
  EXPECT_EQ(inv.stats().removed, 1u);
}

TEST_F(TokenInventoryTest, IncludesConfiguredExtraPaths) {
  std::string extra_dir = absl::StrCat(root(), "/etc-tokens");
  ASSERT_EQ(mkdir(extra_dir.c_str(), 0755), 0);
  std::string file = absl::StrCat(extra_dir, "/node-agent.jwt");
  std::ofstream(file) << MakeFakeJwt();
  TokenInventory::Options o = Opts();
  o.extra_paths = {file, absl::StrCat(root(), "/does-not-exist")};
  TokenInventory inv(o);
  InventoryDelta delta = inv.Rescan();
  ASSERT_THAT(delta.added, SizeIs(1));
  EXPECT_EQ(delta.added[0].kind, TokenKind::kConfigured);
  EXPECT_EQ(delta.added[0].file_name, "node-agent.jwt");
  EXPECT_EQ(delta.added[0].host_path, RealPath(file));
}

TEST_F(TokenInventoryTest, MissingKubeletRootIsEmptyNotAnError) {
  TokenInventory::Options o;
  o.kubelet_root = absl::StrCat(root(), "/nope");
  TokenInventory inv(o);
  EXPECT_TRUE(inv.Rescan().empty());
  EXPECT_EQ(inv.stats().scans, 1u);
}

}  // namespace
}  // namespace tokenwatch::tokens
