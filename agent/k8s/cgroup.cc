#include "agent/k8s/cgroup.h"

#include <dirent.h>
#include <sys/stat.h>

#include <fstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tokenwatch::k8s {
namespace {

constexpr auto kMinRescanGap = std::chrono::milliseconds(100);
// Real hierarchies are a dozen levels deep at most; the bound only guards against surprises.
constexpr int kMaxCgroupDepth = 64;

bool IsHex(absl::string_view s) {
  for (char c : s) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return !s.empty();
}

// A pod UID as the kubelet spells it in a cgroup name: hex and dashes (cgroupfs) or hex and
// underscores (systemd, where a dash would mean a parent slice). Static pods' UIDs are bare hex.
std::optional<std::string> PodUid(absl::string_view s) {
  if (s.empty()) return std::nullopt;
  std::string uid(s);
  for (char& c : uid) {
    if (c == '_') c = '-';
    if (c != '-' && !absl::ascii_isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  return uid;
}

std::optional<std::string> QosOf(absl::string_view s) {
  if (s == "burstable" || s == "besteffort") return std::string(s);
  return std::nullopt;
}

// systemd driver: "[<prefix>-]kubepods[-<qos>]-pod<uid_underscored>.slice".
bool ParseSystemdPodSlice(absl::string_view c, ContainerRef* ref) {
  if (!absl::ConsumeSuffix(&c, ".slice")) return false;
  for (size_t pos = c.find("kubepods-"); pos != absl::string_view::npos;
       pos = c.find("kubepods-", pos + 1)) {
    if (pos != 0 && c[pos - 1] != '-') continue;
    absl::string_view rest = c.substr(pos + sizeof("kubepods-") - 1);
    std::string qos = "guaranteed";
    for (absl::string_view q : {"burstable", "besteffort"}) {
      if (absl::StartsWith(rest, q) && rest.size() > q.size() && rest[q.size()] == '-') {
        qos = std::string(q);
        rest.remove_prefix(q.size() + 1);
      }
    }
    if (!absl::ConsumePrefix(&rest, "pod")) continue;
    std::optional<std::string> uid = PodUid(rest);
    if (!uid) continue;
    ref->pod_uid = *std::move(uid);
    ref->qos = std::move(qos);
    return true;
  }
  return false;
}

// cgroupfs driver: ".../kubepods[/<qos>]/pod<uid>".
bool ParseCgroupfsPodDir(const std::vector<absl::string_view>& comps, size_t i, ContainerRef* ref) {
  absl::string_view c = comps[i];
  if (!absl::ConsumePrefix(&c, "pod") || i == 0) return false;
  std::string qos;
  if (comps[i - 1] == "kubepods") {
    qos = "guaranteed";
  } else if (std::optional<std::string> q = QosOf(comps[i - 1]);
             q && i >= 2 && comps[i - 2] == "kubepods") {
    qos = *q;
  } else {
    return false;
  }
  std::optional<std::string> uid = PodUid(c);
  if (!uid || absl::StrContains(c, '_')) return false;
  ref->pod_uid = *std::move(uid);
  ref->qos = std::move(qos);
  return true;
}

// The container's cgroup, directly below the pod's.
void ParseContainer(absl::string_view c, ContainerRef* ref) {
  absl::ConsumeSuffix(&c, ".scope");
  if (absl::ConsumePrefix(&c, "cri-containerd-")) {
    ref->runtime = "containerd";
  } else if (absl::ConsumePrefix(&c, "crio-conmon-")) {
    ref->runtime = "crio";
    ref->runtime_helper = true;
  } else if (absl::ConsumePrefix(&c, "crio-")) {
    ref->runtime = "crio";
  } else if (absl::ConsumePrefix(&c, "docker-")) {
    ref->runtime = "docker";
  }
  if (c.size() != 64 || !IsHex(c)) return;
  std::string id = absl::AsciiStrToLower(c);
  if (ref->runtime_helper) {
    ref->conmon_of = std::move(id);
  } else {
    ref->container_id = std::move(id);
  }
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string UnescapeMountField(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7' && s[i + 2] >= '0' &&
        s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
      out.push_back(
          static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

std::optional<ContainerRef> ParseCgroupPath(absl::string_view path) {
  std::vector<absl::string_view> comps = absl::StrSplit(path, '/', absl::SkipEmpty());
  for (size_t i = 0; i < comps.size(); ++i) {
    ContainerRef ref;
    if (!ParseSystemdPodSlice(comps[i], &ref) && !ParseCgroupfsPodDir(comps, i, &ref)) continue;
    if (i + 1 < comps.size()) ParseContainer(comps[i + 1], &ref);
    return ref;
  }
  return std::nullopt;
}

absl::StatusOr<std::string> FindCgroup2Mount(const std::string& mountinfo) {
  std::ifstream in(mountinfo);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", mountinfo));
  std::optional<std::string> found;
  std::string line;
  while (std::getline(in, line)) {
    // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <src> ..."
    std::pair<absl::string_view, absl::string_view> halves = absl::StrSplit(line, " - ");
    std::vector<absl::string_view> left = absl::StrSplit(halves.first, ' ', absl::SkipEmpty());
    std::vector<absl::string_view> right = absl::StrSplit(halves.second, ' ', absl::SkipEmpty());
    if (left.size() < 5 || right.empty() || right[0] != "cgroup2") continue;
    std::string mount_point = UnescapeMountField(left[4]);
    // A mount of the hierarchy's root is the one whose paths match what the kernel reports;
    // bind mounts of a subtree come second.
    if (left[3] == "/") return mount_point;
    if (!found) found = std::move(mount_point);
  }
  if (found) return *found;
  return absl::NotFoundError(absl::StrCat("no cgroup2 mount in ", mountinfo));
}

absl::StatusOr<std::unique_ptr<CgroupResolver>> CgroupResolver::Create(std::string mount) {
  if (mount.empty()) {
    absl::StatusOr<std::string> found = FindCgroup2Mount();
    if (!found.ok()) return found.status();
    mount = *std::move(found);
  }
  while (mount.size() > 1 && mount.back() == '/') mount.pop_back();
  struct stat st;
  if (stat(mount.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("cgroup2 mount ", mount, " is not a directory"));
  }
  std::unique_ptr<CgroupResolver> resolver(new CgroupResolver(std::move(mount)));
  Map initial = resolver->Walk();
  absl::MutexLock lock(&resolver->mu_);
  resolver->current_ = std::move(initial);
  resolver->last_walk_ = std::chrono::steady_clock::now();
  resolver->rescans_ = 1;
  return resolver;
}

CgroupResolver::Map CgroupResolver::Walk() const {
  Map out;
  struct Pending {
    std::string abs;
    std::string rel;
    int depth;
  };
  std::vector<Pending> stack = {{mount_, "/", 0}};
  while (!stack.empty()) {
    Pending dir = std::move(stack.back());
    stack.pop_back();
    struct stat st;
    if (lstat(dir.abs.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;  // gone meanwhile
    out[static_cast<uint64_t>(st.st_ino)] = dir.rel;
    if (dir.depth >= kMaxCgroupDepth) continue;
    DIR* d = opendir(dir.abs.c_str());
    if (d == nullptr) continue;
    while (struct dirent* e = readdir(d)) {
      absl::string_view name(e->d_name);
      if (name == "." || name == "..") continue;
      // Cgroup dirs hold dozens of control files; d_type spares a stat for each.
      if (e->d_type != DT_DIR && e->d_type != DT_UNKNOWN) continue;
      std::string rel = dir.rel == "/" ? absl::StrCat("/", name) : absl::StrCat(dir.rel, "/", name);
      stack.push_back({absl::StrCat(dir.abs, "/", name), std::move(rel), dir.depth + 1});
    }
    closedir(d);
  }
  return out;
}

std::optional<std::string> CgroupResolver::PathOf(uint64_t cgroup_id) {
  auto find = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> std::optional<std::string> {
    if (auto it = current_.find(cgroup_id); it != current_.end()) return it->second;
    if (auto it = previous_.find(cgroup_id); it != previous_.end()) return it->second;
    return std::nullopt;
  };
  {
    absl::MutexLock lock(&mu_);
    if (std::optional<std::string> hit = find()) return hit;
    auto now = std::chrono::steady_clock::now();
    if (last_walk_ && now - *last_walk_ < kMinRescanGap) return std::nullopt;
    // Claimed before walking, so concurrent misses do not all walk.
    last_walk_ = now;
  }
  Map fresh = Walk();
  absl::MutexLock lock(&mu_);
  previous_ = std::move(current_);
  current_ = std::move(fresh);
  ++rescans_;
  return find();
}

uint64_t CgroupResolver::rescans() const {
  absl::MutexLock lock(&mu_);
  return rescans_;
}

}  // namespace tokenwatch::k8s
