#include "agent/detect/policy.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <openssl/evp.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "yaml-cpp/yaml.h"

namespace tokenwatch::detect {
namespace {

struct RuleName {
  const char* id;
  const char* name;
};
constexpr RuleName kRules[] = {
    {"TW001", "token-read-unexpected"},   {"TW002", "token-read-cross-pod"},
    {"TW003", "token-read-host"},         {"TW004", "token-read-exec-session"},
    {"TW005", "token-read-io-uring"},     {"TW010", "token-used-apiserver"},
    {"TW011", "token-egress"},            {"TW012", "token-in-argv"},
    {"TW020", "apiserver-contact-unexpected"}, {"TW021", "metadata-service-contact"},
    {"TW090", "sensor-events-lost"},
};

absl::string_view Basename(absl::string_view path) {
  size_t slash = path.rfind('/');
  return slash == absl::string_view::npos ? path : path.substr(slash + 1);
}

// The whole file, or false with errno's value in `error`. A directory is an
// error here (EISDIR): read through a stream it looks like an empty file, an
// empty policy that would silently replace the real one.
bool ReadWholeFile(const std::string& path, std::string* text, int* error) {
  text->clear();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = errno;
    return false;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    *error = S_ISDIR(st.st_mode) ? EISDIR : errno;
    close(fd);
    return false;
  }
  char buf[8192];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *error = errno;
      close(fd);
      return false;
    }
    if (n == 0) break;
    text->append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return true;
}

}  // namespace

// Walks the YAML tree of `policy:` and builds a Policy; the first problem
// becomes the error, naming the file, the line and the key's full path.
class PolicyParser {
 public:
  explicit PolicyParser(std::string file) : file_(std::move(file)) {}

  absl::Status Error(const YAML::Node& at, const std::string& key, const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat("config ", file_, ":", at.Mark().line + 1,
                                                   ": key '", key, "': ", problem));
  }

  absl::Status Parse(const YAML::Node& root, Policy* out) {
    if (!root.IsDefined() || root.IsNull()) return absl::OkStatus();
    if (!root.IsMap()) return Error(root, "policy", "expected a mapping");
    for (const auto& entry : root) {
      const std::string key = entry.first.Scalar();
      const YAML::Node& value = entry.second;
      const std::string path = "policy." + key;
      absl::Status s;
      if (key == "learning") {
        s = ParseLearning(value, path, &out->learning_);
      } else if (key == "host_executables") {
        s = ParseExecutables(value, path, &out->host_executables_);
      } else if (key == "rules") {
        s = ParseRules(value, path, &out->rules_);
      } else if (key == "workloads") {
        s = ParseWorkloads(value, path, &out->workloads_);
      } else {
        s = Error(entry.first, path,
                  "unknown key (known: learning, host_executables, rules, workloads)");
      }
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Scalar(const YAML::Node& value, const std::string& key, std::string* out) {
    if (!value.IsScalar()) return Error(value, key, "expected a single value");
    *out = value.Scalar();
    return absl::OkStatus();
  }

  absl::Status Bool(const YAML::Node& value, const std::string& key, bool* out) {
    std::string text;
    if (absl::Status s = Scalar(value, key, &text); !s.ok()) return s;
    if (text == "true") {
      *out = true;
    } else if (text == "false") {
      *out = false;
    } else {
      return Error(value, key, absl::StrCat("'", text, "' is not true or false"));
    }
    return absl::OkStatus();
  }

  absl::Status Glob(const YAML::Node& value, const std::string& key, std::string* out) {
    if (absl::Status s = Scalar(value, key, out); !s.ok()) return s;
    if (absl::Status s = ValidateGlob(*out); !s.ok()) {
      return Error(value, key, absl::StrCat("bad glob '", *out, "': ", s.message()));
    }
    return absl::OkStatus();
  }

  absl::Status ParseLearning(const YAML::Node& node, const std::string& path,
                             LearningSettings* out) {
    if (!node.IsMap()) return Error(node, path, "expected a mapping (enabled, window)");
    for (const auto& entry : node) {
      const std::string key = entry.first.Scalar();
      const std::string sub = path + "." + key;
      if (key == "enabled") {
        if (absl::Status s = Bool(entry.second, sub, &out->enabled); !s.ok()) return s;
      } else if (key == "window") {
        std::string text;
        if (absl::Status s = Scalar(entry.second, sub, &text); !s.ok()) return s;
        absl::Duration d;
        if (!absl::ParseDuration(text, &d) || d <= absl::ZeroDuration() ||
            d == absl::InfiniteDuration()) {
          return Error(entry.second, sub,
                       absl::StrCat("'", text, "' is not a positive duration such as 24h or 90m"));
        }
        out->window = d;
      } else {
        return Error(entry.first, sub, "unknown key (known: enabled, window)");
      }
    }
    return absl::OkStatus();
  }

  absl::Status ParseExecutable(const YAML::Node& node, const std::string& path,
                               AllowedExecutable* out) {
    // A bare string is shorthand for {exe: STRING}.
    if (node.IsScalar()) return ParseExe(node, path, &out->exe);
    if (!node.IsMap()) return Error(node, path, "expected a path or a mapping (exe, sha256)");
    for (const auto& entry : node) {
      const std::string key = entry.first.Scalar();
      const std::string sub = path + "." + key;
      if (key == "exe") {
        if (absl::Status s = ParseExe(entry.second, sub, &out->exe); !s.ok()) return s;
      } else if (key == "sha256") {
        if (absl::Status s = Scalar(entry.second, sub, &out->sha256); !s.ok()) return s;
        bool hex = out->sha256.size() == 64;
        for (char c : out->sha256) hex = hex && absl::ascii_isxdigit(c);
        if (!hex) {
          return Error(entry.second, sub,
                       absl::StrCat("'", out->sha256, "' is not 64 hexadecimal digits"));
        }
        out->sha256 = absl::AsciiStrToLower(out->sha256);
      } else {
        return Error(entry.first, sub, "unknown key (known: exe, sha256)");
      }
    }
    if (out->exe.empty()) return Error(node, path + ".exe", "missing (the executable's path)");
    return absl::OkStatus();
  }

  absl::Status ParseExe(const YAML::Node& node, const std::string& path, std::string* out) {
    if (absl::Status s = Glob(node, path, out); !s.ok()) return s;
    // Basenames would let any file of that name anywhere pass.
    if (!absl::StartsWith(*out, "/")) {
      return Error(node, path, absl::StrCat("'", *out, "' is not a full path (starts with /)"));
    }
    return absl::OkStatus();
  }

  absl::Status ParseExecutables(const YAML::Node& node, const std::string& path,
                                std::vector<AllowedExecutable>* out) {
    if (!node.IsSequence()) return Error(node, path, "expected a list");
    for (size_t i = 0; i < node.size(); ++i) {
      AllowedExecutable exe;
      absl::Status s = ParseExecutable(node[i], absl::StrCat(path, "[", i, "]"), &exe);
      if (!s.ok()) return s;
      out->push_back(std::move(exe));
    }
    return absl::OkStatus();
  }

  absl::Status ParseRules(const YAML::Node& node, const std::string& path,
                          absl::flat_hash_map<std::string, RuleSetting>* out) {
    if (!node.IsMap()) return Error(node, path, "expected a mapping of rule id to severity");
    for (const auto& entry : node) {
      const std::string name = entry.first.Scalar();
      const std::string sub = path + "." + name;
      std::string id;
      if (!IsKnownRule(name, &id)) {
        return Error(entry.first, sub, "unknown rule (use an id such as TW001 or its name)");
      }
      std::string text;
      if (absl::Status s = Scalar(entry.second, sub, &text); !s.ok()) return s;
      auto setting = ParseRuleSetting(text);
      if (!setting.ok()) return Error(entry.second, sub, std::string(setting.status().message()));
      if (out->contains(id)) return Error(entry.first, sub, absl::StrCat(id, " is set twice"));
      (*out)[id] = *setting;
    }
    return absl::OkStatus();
  }

  absl::Status ParseWorkloads(const YAML::Node& node, const std::string& path,
                              std::vector<WorkloadPolicy>* out) {
    if (!node.IsSequence()) return Error(node, path, "expected a list");
    for (size_t i = 0; i < node.size(); ++i) {
      const YAML::Node& item = node[i];
      const std::string at = absl::StrCat(path, "[", i, "]");
      if (!item.IsMap()) return Error(item, at, "expected a mapping");
      WorkloadPolicy w;
      w.line = item.Mark().line + 1;
      for (const auto& entry : item) {
        const std::string key = entry.first.Scalar();
        const std::string sub = at + "." + key;
        absl::Status s;
        if (key == "namespace") {
          s = Glob(entry.second, sub, &w.namespace_glob);
        } else if (key == "workload") {
          s = Glob(entry.second, sub, &w.workload_glob);
        } else if (key == "container") {
          s = Glob(entry.second, sub, &w.container_glob);
        } else if (key == "service_account") {
          s = Glob(entry.second, sub, &w.service_account_glob);
        } else if (key == "executables") {
          s = ParseExecutables(entry.second, sub, &w.executables);
        } else if (key == "apiserver_contact") {
          bool expected = false;
          s = Bool(entry.second, sub, &expected);
          w.apiserver_contact = expected;
        } else if (key == "rules") {
          s = ParseRules(entry.second, sub, &w.rules);
        } else {
          s = Error(entry.first, sub,
                    "unknown key (known: namespace, workload, container, service_account, "
                    "executables, apiserver_contact, rules)");
        }
        if (!s.ok()) return s;
      }
      for (size_t j = 0; j < out->size(); ++j) {
        const WorkloadPolicy& o = (*out)[j];
        if (o.namespace_glob == w.namespace_glob && o.workload_glob == w.workload_glob &&
            o.container_glob == w.container_glob &&
            o.service_account_glob == w.service_account_glob) {
          return Error(item, at,
                       absl::StrCat("duplicate workload: same selectors as ", path, "[", j,
                                    "] (line ", o.line, ")"));
        }
      }
      out->push_back(std::move(w));
    }
    return absl::OkStatus();
  }

  std::string file_;
};

bool GlobMatch(const std::string& glob, const std::string& text) {
  return fnmatch(glob.c_str(), text.c_str(), 0) == 0;
}

absl::Status ValidateGlob(const std::string& glob) {
  if (glob.empty()) return absl::InvalidArgumentError("empty");
  for (size_t i = 0; i < glob.size(); ++i) {
    char c = glob[i];
    if (c == '\\') {
      if (i + 1 == glob.size()) return absl::InvalidArgumentError("ends with a lone '\\'");
      ++i;
    } else if (c == '[') {
      // A class: an optional '!' or '^', then ']' may come first as a member.
      size_t j = i + 1;
      if (j < glob.size() && (glob[j] == '!' || glob[j] == '^')) ++j;
      if (j < glob.size() && glob[j] == ']') ++j;
      while (j < glob.size() && glob[j] != ']') ++j;
      if (j >= glob.size()) return absl::InvalidArgumentError("'[' is never closed");
      if (j == i + 1) return absl::InvalidArgumentError("empty '[]' class");
      i = j;
    }
  }
  return absl::OkStatus();
}

bool IsKnownRule(const std::string& id_or_name, std::string* id) {
  for (const RuleName& r : kRules) {
    if (id_or_name == r.id || id_or_name == r.name) {
      *id = r.id;
      return true;
    }
  }
  return false;
}

absl::StatusOr<RuleSetting> ParseRuleSetting(const std::string& text) {
  RuleSetting s;
  if (text == "off") {
    s.off = true;
  } else if (text == "low") {
    s.severity = v1::SEVERITY_LOW;
  } else if (text == "medium") {
    s.severity = v1::SEVERITY_MEDIUM;
  } else if (text == "high") {
    s.severity = v1::SEVERITY_HIGH;
  } else if (text == "critical") {
    s.severity = v1::SEVERITY_CRITICAL;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not one of off, low, medium, high, critical"));
  }
  return s;
}

const char* SeverityName(v1::Severity severity) {
  switch (severity) {
    case v1::SEVERITY_LOW:
      return "low";
    case v1::SEVERITY_MEDIUM:
      return "medium";
    case v1::SEVERITY_HIGH:
      return "high";
    case v1::SEVERITY_CRITICAL:
      return "critical";
    default:
      return "unspecified";
  }
}

bool WorkloadPolicy::Matches(const WorkloadKey& key) const {
  if (!GlobMatch(namespace_glob, key.namespace_name)) return false;
  if (!GlobMatch(workload_glob, key.workload)) return false;
  if (!GlobMatch(service_account_glob, key.service_account)) return false;
  return GlobMatch(container_glob, key.container) ||
         GlobMatch(container_glob, std::string(Basename(key.container)));
}

absl::StatusOr<std::shared_ptr<const Policy>> Policy::Parse(const std::string& text,
                                                            const std::string& file) {
  YAML::Node root;
  // yaml-cpp reports syntax errors by throwing; this is where they become a
  // Status naming the file and line.
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("config ", file, ":", e.mark.line + 1, ": ", e.msg));
  }
  auto policy = std::make_shared<Policy>();
  if (root.IsNull() || !root.IsMap()) return std::shared_ptr<const Policy>(policy);
  YAML::Node node = root["policy"];
  PolicyParser parser(file);
  if (absl::Status s = parser.Parse(node, policy.get()); !s.ok()) return s;
  return std::shared_ptr<const Policy>(policy);
}

absl::StatusOr<std::shared_ptr<const Policy>> Policy::LoadFile(const std::string& path) {
  std::string text;
  int error = 0;
  if (!ReadWholeFile(path, &text, &error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config ", path, ": cannot read the file: ", std::strerror(error)));
  }
  return Parse(text, path);
}

const WorkloadPolicy* Policy::Match(const WorkloadKey& key) const {
  for (const WorkloadPolicy& w : workloads_) {
    if (w.Matches(key)) return &w;
  }
  return nullptr;
}

std::optional<v1::Severity> Policy::RuleSeverity(const std::string& rule_id, v1::Severity base,
                                                 const WorkloadPolicy* workload) const {
  const RuleSetting* setting = nullptr;
  if (workload != nullptr) {
    auto it = workload->rules.find(rule_id);
    if (it != workload->rules.end()) setting = &it->second;
  }
  if (setting == nullptr) {
    auto it = rules_.find(rule_id);
    if (it != rules_.end()) setting = &it->second;
  }
  if (setting == nullptr) return base;
  if (setting->off) return std::nullopt;
  return setting->severity;
}

// ---------------------------------------------------------------------------
// ExeHasher

absl::StatusOr<std::string> ExeHasher::OfProcess(uint32_t pid) {
  std::string path = absl::StrCat(proc_root_, "/", pid, "/exe");
  // Opening the magic link opens the file the process runs, even in another
  // mount namespace and even when its path was since replaced.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  auto result = OfFd(fd, path);
  close(fd);
  return result;
}

absl::StatusOr<std::string> ExeHasher::OfFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  auto result = OfFd(fd, path);
  close(fd);
  return result;
}

absl::StatusOr<std::string> ExeHasher::OfFd(int fd, const std::string& what) {
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat("stat ", what, ": ", std::strerror(errno)));
  }
  FileKey key{st.st_dev, st.st_ino,
              static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
              static_cast<int64_t>(st.st_size)};
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx);
    return absl::InternalError("sha256: cannot initialise");
  }
  char buf[1 << 16];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) EVP_DigestUpdate(ctx, buf, static_cast<size_t>(n));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  if (n < 0) return absl::InternalError(absl::StrCat("read ", what, ": ", std::strerror(errno)));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  absl::MutexLock lock(&mu_);
  // Bounded: a node runs a few thousand distinct binaries at most.
  if (cache_.size() >= 4096) cache_.clear();
  cache_[key] = hex;
  ++files_hashed_;
  return hex;
}

uint64_t ExeHasher::files_hashed() const {
  absl::MutexLock lock(&mu_);
  return files_hashed_;
}

// ---------------------------------------------------------------------------
// PolicyStore

PolicyStore::PolicyStore(std::shared_ptr<const Policy> initial, std::string path,
                         std::function<absl::Status(const std::string&)> extra_check)
    : path_(std::move(path)), extra_check_(std::move(extra_check)), current_(std::move(initial)) {
  if (current_ == nullptr) current_ = std::make_shared<const Policy>();
  if (!path_.empty()) {
    std::string text;
    int error = 0;
    if (ReadWholeFile(path_, &text, &error)) loaded_content_ = std::move(text);
  }
}

std::shared_ptr<const Policy> PolicyStore::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

absl::Status PolicyStore::Reload(bool only_if_changed) {
  if (path_.empty()) return absl::OkStatus();
  std::string text;
  int error = 0;
  const bool ok = ReadWholeFile(path_, &text, &error);
  if (ok && only_if_changed) {
    absl::MutexLock lock(&mu_);
    if (text == loaded_content_) return absl::OkStatus();
  }
  absl::Status status;
  std::shared_ptr<const Policy> parsed;
  if (!ok) {
    status = absl::InvalidArgumentError(
        absl::StrCat("config ", path_, ": cannot read the file: ", std::strerror(error)));
  } else if (extra_check_ && !(status = extra_check_(path_)).ok()) {
    // The agent's own keys are checked too: a file the agent would refuse at
    // start must not half-apply.
  } else {
    auto policy = Policy::Parse(text, path_);
    if (policy.ok()) {
      parsed = *std::move(policy);
    } else {
      status = policy.status();
    }
  }
  absl::MutexLock lock(&mu_);
  // Remember what was tried, good or bad, so an unchanged bad file is not
  // re-counted on every unrelated event in the directory.
  if (ok) loaded_content_ = std::move(text);
  if (!status.ok()) {
    ++stats_.failures;
    stats_.last_error = std::string(status.message());
    return status;
  }
  current_ = std::move(parsed);
  ++stats_.successes;
  stats_.last_error.clear();
  stats_.last_success = absl::Now();
  return absl::OkStatus();
}

PolicyReloadStats PolicyStore::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

// ---------------------------------------------------------------------------
// ConfigFileWatcher

absl::StatusOr<std::unique_ptr<ConfigFileWatcher>> ConfigFileWatcher::Create(
    const std::string& path) {
  std::string dir = ".";
  size_t slash = path.rfind('/');
  if (slash == 0) {
    dir = "/";
  } else if (slash != std::string::npos) {
    dir = path.substr(0, slash);
  }
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("inotify: ", std::strerror(errno)));
  if (inotify_add_watch(fd, dir.c_str(),
                        IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MODIFY |
                            IN_ATTRIB) < 0) {
    int err = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("inotify watch ", dir, ": ", std::strerror(err)));
  }
  return std::unique_ptr<ConfigFileWatcher>(new ConfigFileWatcher(fd));
}

ConfigFileWatcher::~ConfigFileWatcher() { close(fd_); }

bool ConfigFileWatcher::Poll() {
  bool changed = false;
  alignas(inotify_event) char buf[4096];
  while (read(fd_, buf, sizeof(buf)) > 0) changed = true;
  return changed;
}

}  // namespace tokenwatch::detect
