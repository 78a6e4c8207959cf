#include "agent/tokens/inventory.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/tokens/redact.h"
#include "openssl/crypto.h"

namespace tokenwatch::tokens {
namespace {

// Files this large are not tokens; checking the size first keeps a stray big file cheap.
constexpr off_t kMaxTokenFileBytes = 64 * 1024;
// Projected items may live in subdirectories (path: a/b/token); real ones are shallow, and the
// bound stops a symlink loop planted in a volume.
constexpr int kMaxVolumeDepth = 8;

constexpr std::pair<absl::string_view, TokenKind> kVolumePlugins[] = {
    {"kubernetes.io~projected", TokenKind::kProjected},
    {"kubernetes.io~secret", TokenKind::kSecret},
};

// The kubelet's atomic writer keeps its own entries in each volume under names starting with
// "..": ..data, ..data_tmp and the ..<timestamp> dirs. Listing them too would find every token
// twice (once through the visible name, once through the timestamped dir) and would pick up the
// old dir during a rotation.
bool IsKubeletPrivate(absl::string_view name) { return absl::StartsWith(name, ".."); }

// Directory entries except "." and "..". An unreadable or missing directory lists as empty:
// pods come and go while we walk.
std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (struct dirent* e = readdir(d)) {
    absl::string_view name(e->d_name);
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Worth parsing as a token at all: anything else in a volume (ca.crt, namespace, a config file)
// is simply not a token, and is not counted as malformed.
bool LooksLikeJwt(absl::string_view s) { return absl::StartsWith(s, "eyJ"); }

struct VolumeContext {
  std::string pod_uid;
  std::string volume;
  TokenKind kind;
};

struct ScanResult {
  absl::flat_hash_map<FileId, TokenInfo> tokens;
  uint64_t malformed = 0;
  uint64_t unreadable = 0;
};

void ScanFile(const std::string& visible_path, const VolumeContext& ctx,
              const std::string& file_name, ScanResult* result) {
  char real[PATH_MAX];
  if (realpath(visible_path.c_str(), real) == nullptr) {
    ++result->unreadable;
    return;
  }
  int fd = open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    ++result->unreadable;
    return;
  }
  absl::Cleanup close_fd = [fd] { close(fd); };
  // fstat on the fd we read, so the FileId and the content belong to the same file even if the
  // kubelet swaps the path meanwhile.
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ++result->unreadable;
    return;
  }
  if (!S_ISREG(st.st_mode) || st.st_size >= kMaxTokenFileBytes) return;

  std::string content(static_cast<size_t>(kMaxTokenFileBytes), '\0');
  absl::Cleanup wipe = [&content] { OPENSSL_cleanse(content.data(), content.size()); };
  size_t len = 0;
  while (len < content.size()) {
    ssize_t n = read(fd, content.data() + len, content.size() - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ++result->unreadable;
      return;
    }
    if (n == 0) break;
    len += static_cast<size_t>(n);
  }
  absl::string_view token = absl::StripAsciiWhitespace(absl::string_view(content.data(), len));
  if (!LooksLikeJwt(token)) return;
  absl::StatusOr<Claims> claims = ParseServiceAccountJwt(token);
  if (!claims.ok()) {
    ++result->malformed;
    return;
  }
  TokenInfo info;
  info.id = FileIdFromStat(st);
  info.host_path = real;
  info.pod_uid = ctx.pod_uid;
  info.volume = ctx.volume;
  info.file_name = file_name;
  info.kind = ctx.kind;
  info.claims = *std::move(claims);
  info.digest = TokenDigest(token);
  // The first spelling wins when one file is reachable twice (a configured path inside a volume).
  result->tokens.try_emplace(info.id, std::move(info));
}

void WalkVolume(const std::string& dir, const VolumeContext& ctx, const std::string& prefix,
                int depth, ScanResult* result) {
  for (const std::string& name : ListDir(dir)) {
    if (IsKubeletPrivate(name)) continue;
    std::string path = absl::StrCat(dir, "/", name);
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      // A dangling visible symlink: the kubelet is mid-swap or the pod is going away.
      ++result->unreadable;
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      if (depth < kMaxVolumeDepth) {
        WalkVolume(path, ctx, absl::StrCat(prefix, name, "/"), depth + 1, result);
      }
    } else if (S_ISREG(st.st_mode)) {
      ScanFile(path, ctx, absl::StrCat(prefix, name), result);
    }
  }
}

ScanResult ScanAll(const TokenInventory::Options& options) {
  ScanResult result;
  std::string pods_dir = absl::StrCat(options.kubelet_root, "/pods");
  for (const std::string& pod : ListDir(pods_dir)) {
    for (const auto& [plugin, kind] : kVolumePlugins) {
      std::string plugin_dir = absl::StrCat(pods_dir, "/", pod, "/volumes/", plugin);
      for (const std::string& volume : ListDir(plugin_dir)) {
        std::string volume_dir = absl::StrCat(plugin_dir, "/", volume);
        if (!IsDir(volume_dir)) continue;
        WalkVolume(volume_dir, VolumeContext{pod, volume, kind}, "", 0, &result);
      }
    }
  }
  for (const std::string& extra : options.extra_paths) {
    VolumeContext ctx{"", "", TokenKind::kConfigured};
    struct stat st;
    if (stat(extra.c_str(), &st) != 0) continue;  // configured but absent: nothing to watch yet
    if (S_ISDIR(st.st_mode)) {
      WalkVolume(extra, ctx, "", 0, &result);
    } else if (S_ISREG(st.st_mode)) {
      size_t slash = extra.rfind('/');
      ScanFile(extra, ctx, slash == std::string::npos ? extra : extra.substr(slash + 1), &result);
    }
  }
  return result;
}

bool SameToken(const TokenInfo& a, const TokenInfo& b) {
  return a.digest == b.digest && a.host_path == b.host_path && a.file_name == b.file_name;
}

}  // namespace

FileId FileIdFromStat(const struct stat& st) {
  FileId id;
  id.dev = (static_cast<uint64_t>(major(st.st_dev)) << 20) | minor(st.st_dev);
  id.ino = static_cast<uint64_t>(st.st_ino);
  return id;
}

absl::string_view TokenKindName(TokenKind kind) {
  switch (kind) {
    case TokenKind::kProjected:
      return "projected";
    case TokenKind::kSecret:
      return "secret";
    case TokenKind::kConfigured:
      return "configured";
  }
  return "unknown";
}

TokenInventory::TokenInventory(Options options) : options_(std::move(options)) {}

InventoryDelta TokenInventory::Rescan() {
  absl::MutexLock scan_lock(&scan_mu_);
  ScanResult result = ScanAll(options_);

  absl::MutexLock lock(&mu_);
  InventoryDelta delta;
  for (const auto& [id, old_info] : tokens_) {
    auto it = result.tokens.find(id);
    if (it == result.tokens.end() || !SameToken(it->second, old_info)) {
      delta.removed.push_back(old_info);
    }
  }
  for (const auto& [id, new_info] : result.tokens) {
    auto it = tokens_.find(id);
    if (it == tokens_.end() || !SameToken(it->second, new_info)) {
      delta.added.push_back(new_info);
    }
  }
  auto by_path = [](const TokenInfo& a, const TokenInfo& b) { return a.host_path < b.host_path; };
  std::sort(delta.added.begin(), delta.added.end(), by_path);
  std::sort(delta.removed.begin(), delta.removed.end(), by_path);
  tokens_ = std::move(result.tokens);
  by_digest_.clear();
  for (const auto& [id, info] : tokens_) by_digest_.try_emplace(info.digest, id);

  ++stats_.scans;
  stats_.tokens = tokens_.size();
  stats_.malformed = result.malformed;
  stats_.unreadable = result.unreadable;
  stats_.added += delta.added.size();
  stats_.removed += delta.removed.size();
  return delta;
}

std::optional<TokenInfo> TokenInventory::Lookup(const FileId& id) const {
  absl::MutexLock lock(&mu_);
  auto it = tokens_.find(id);
  if (it == tokens_.end()) return std::nullopt;
  return it->second;
}

std::optional<TokenInfo> TokenInventory::LookupDigest(absl::string_view digest) const {
  absl::MutexLock lock(&mu_);
  auto it = by_digest_.find(digest);
  if (it == by_digest_.end()) return std::nullopt;
  auto token = tokens_.find(it->second);
  if (token == tokens_.end()) return std::nullopt;
  return token->second;
}

std::vector<TokenInfo> TokenInventory::Snapshot() const {
  absl::MutexLock lock(&mu_);
  std::vector<TokenInfo> out;
  out.reserve(tokens_.size());
  for (const auto& [id, info] : tokens_) out.push_back(info);
  std::sort(out.begin(), out.end(),
            [](const TokenInfo& a, const TokenInfo& b) { return a.host_path < b.host_path; });
  return out;
}

InventoryStats TokenInventory::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace tokenwatch::tokens
