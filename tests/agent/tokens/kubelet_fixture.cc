#include "tests/agent/tokens/kubelet_fixture.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace tokenwatch::tokens::fixture {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

void SetString(Struct* s, const std::string& key, const std::string& value) {
  (*s->mutable_fields())[key].set_string_value(value);
}

std::string ToJson(const Struct& s) {
  std::string json;
  // A Struct of strings, lists and numbers always serializes.
  (void)google::protobuf::util::MessageToJsonString(s, &json);
  return json;
}

std::string Segment(absl::string_view bytes) { return absl::WebSafeBase64Escape(bytes); }

absl::Status MkdirP(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, const std::string& content) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      int err = errno;
      close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("write ", path));
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  return absl::OkStatus();
}

std::string TopLevelName(const std::string& path) {
  return std::string(absl::string_view(path).substr(0, path.find('/')));
}

}  // namespace

std::string MakeFakeJwt(const FakeJwtOptions& o) {
  Struct payload;
  SetString(&payload, "iss", o.issuer);
  std::string sub =
      absl::StrCat("system:serviceaccount:", o.namespace_name, ":", o.service_account);
  if (o.kubernetes_claims && o.legacy) {
    SetString(&payload, "kubernetes.io/serviceaccount/namespace", o.namespace_name);
    SetString(&payload, "kubernetes.io/serviceaccount/secret.name",
              absl::StrCat(o.service_account, "-token-x7k2p"));
    SetString(&payload, "kubernetes.io/serviceaccount/service-account.name", o.service_account);
    SetString(&payload, "kubernetes.io/serviceaccount/service-account.uid", o.service_account_uid);
    SetString(&payload, "sub", sub);
  } else if (o.kubernetes_claims) {
    Struct k8s;
    SetString(&k8s, "namespace", o.namespace_name);
    if (!o.pod_uid.empty()) {
      Struct pod;
      SetString(&pod, "name", o.pod_name);
      SetString(&pod, "uid", o.pod_uid);
      *(*k8s.mutable_fields())["pod"].mutable_struct_value() = pod;
    }
    Struct sa;
    SetString(&sa, "name", o.service_account);
    SetString(&sa, "uid", o.service_account_uid);
    *(*k8s.mutable_fields())["serviceaccount"].mutable_struct_value() = sa;
    *(*payload.mutable_fields())["kubernetes.io"].mutable_struct_value() = k8s;
    SetString(&payload, "sub", sub);
  } else {
    SetString(&payload, "sub", "user@example.com");
  }
  if (o.audience_as_string && !o.audiences.empty()) {
    SetString(&payload, "aud", o.audiences.front());
  } else if (!o.audiences.empty()) {
    auto* list = (*payload.mutable_fields())["aud"].mutable_list_value();
    for (const std::string& a : o.audiences) list->add_values()->set_string_value(a);
  }
  if (o.expiry) {
    int64_t exp = absl::ToUnixSeconds(*o.expiry);
    (*payload.mutable_fields())["exp"].set_number_value(static_cast<double>(exp));
    (*payload.mutable_fields())["iat"].set_number_value(static_cast<double>(exp - 3600));
    (*payload.mutable_fields())["nbf"].set_number_value(static_cast<double>(exp - 3600));
  }
  unsigned char sig[256];
  RAND_bytes(sig, sizeof(sig));
  return absl::StrCat(Segment(R"({"alg":"RS256","kid":"x"})"), ".", Segment(ToJson(payload)), ".",
                      Segment(absl::string_view(reinterpret_cast<char*>(sig), sizeof(sig))));
}

std::string VolumeDir(const std::string& root, const std::string& pod_uid,
                      const std::string& volume, const std::string& plugin) {
  return absl::StrCat(root, "/pods/", pod_uid, "/volumes/", plugin, "/", volume);
}

absl::StatusOr<std::string> WriteVolume(const std::string& volume_dir, const VolumeFiles& files) {
  if (absl::Status s = MkdirP(volume_dir); !s.ok()) return s;

  // 1. A new timestamped dir holding every file (the kubelet's ..2006_01_02_15_04_05.<random>).
  std::string tmpl = absl::StrCat(
      volume_dir, "/", absl::FormatTime("..%Y_%m_%d_%H_%M_%S.", absl::Now(), absl::UTCTimeZone()),
      "XXXXXX");
  if (mkdtemp(tmpl.data()) == nullptr) {
    return absl::ErrnoToStatus(errno, absl::StrCat("mkdtemp ", tmpl));
  }
  std::string ts_dir = tmpl;
  std::string ts_name = ts_dir.substr(volume_dir.size() + 1);
  chmod(ts_dir.c_str(), 0755);
  for (const auto& [path, content] : files) {
    std::string full = absl::StrCat(ts_dir, "/", path);
    if (size_t slash = full.rfind('/'); slash > ts_dir.size()) {
      if (absl::Status s = MkdirP(full.substr(0, slash)); !s.ok()) return s;
    }
    if (absl::Status s = WriteFile(full, content); !s.ok()) return s;
  }

  // 2. Remember the old dir, then swap: symlink ..data_tmp -> new dir, rename over ..data.
  std::string data = absl::StrCat(volume_dir, "/..data");
  std::string old_ts;
  char buf[4096];
  if (ssize_t n = readlink(data.c_str(), buf, sizeof(buf) - 1); n > 0) {
    old_ts = std::string(buf, static_cast<size_t>(n));
  }
  std::string data_tmp = absl::StrCat(volume_dir, "/..data_tmp");
  unlink(data_tmp.c_str());
  if (symlink(ts_name.c_str(), data_tmp.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, "symlink ..data_tmp");
  }
  if (rename(data_tmp.c_str(), data.c_str()) != 0) {
    return absl::ErrnoToStatus(errno, "rename ..data_tmp ..data");
  }

  // 3. Visible names: symlink new ones to ..data/<name>, drop ones no longer in the payload.
  std::set<std::string> wanted;
  for (const auto& [path, content] : files) wanted.insert(TopLevelName(path));
  for (const std::string& name : wanted) {
    std::string link = absl::StrCat(volume_dir, "/", name);
    struct stat st;
    if (lstat(link.c_str(), &st) == 0) continue;
    if (symlink(absl::StrCat("..data/", name).c_str(), link.c_str()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("symlink ", name));
    }
  }
  if (DIR* d = opendir(volume_dir.c_str()); d != nullptr) {
    std::vector<std::string> gone;
    while (struct dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name.rfind(".", 0) == 0 || wanted.count(name) > 0) continue;
      gone.push_back(absl::StrCat(volume_dir, "/", name));
    }
    closedir(d);
    for (const std::string& path : gone) unlink(path.c_str());
  }
  std::error_code ec;

  // 4. The old payload goes last, after nothing points at it any more.
  if (!old_ts.empty() && old_ts != ts_name) {
    std::filesystem::remove_all(absl::StrCat(volume_dir, "/", old_ts), ec);
  }
  return ts_dir;
}

absl::StatusOr<std::string> WriteProjectedVolume(const std::string& root,
                                                 const std::string& pod_uid,
                                                 const std::string& volume,
                                                 const VolumeFiles& files) {
  return WriteVolume(VolumeDir(root, pod_uid, volume, kProjectedPlugin), files);
}

absl::StatusOr<std::string> WriteSecretVolume(const std::string& root, const std::string& pod_uid,
                                              const std::string& volume, const VolumeFiles& files) {
  return WriteVolume(VolumeDir(root, pod_uid, volume, kSecretPlugin), files);
}

absl::StatusOr<std::string> RotateProjectedVolume(const std::string& root,
                                                  const std::string& pod_uid,
                                                  const std::string& volume,
                                                  const VolumeFiles& files) {
  std::string dir = VolumeDir(root, pod_uid, volume, kProjectedPlugin);
  struct stat st;
  if (lstat(absl::StrCat(dir, "/..data").c_str(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("no volume to rotate at ", dir));
  }
  return WriteVolume(dir, files);
}

absl::Status RemovePod(const std::string& root, const std::string& pod_uid) {
  std::error_code ec;
  std::filesystem::remove_all(absl::StrCat(root, "/pods/", pod_uid), ec);
  if (ec) return absl::InternalError(absl::StrCat("remove pod ", pod_uid, ": ", ec.message()));
  return absl::OkStatus();
}

TempDir::TempDir() {
  const char* base = getenv("TEST_TMPDIR");
  std::string tmpl =
      absl::StrCat(base != nullptr && *base != '\0' ? base : "/tmp", "/tokenwatch-test-XXXXXX");
  if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace tokenwatch::tokens::fixture
