#include "agent/main/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "yaml-cpp/yaml.h"

namespace tokenwatch::agent {
namespace {

// One setting: its flag/key, whether it is a list, and how a text value
// lands in the config. Flags and file keys share this table so that the two
// can never disagree.
struct Setting {
  const char* flag;  // without the leading "--"
  bool repeated;
  bool file_only;
  std::function<absl::Status(const std::string&, AgentConfig*)> set;
};

absl::Status CheckHostPort(const std::string& value) {
  size_t colon = value.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(value.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", value, "' is not HOST:PORT"));
  }
  return absl::OkStatus();
}

absl::Status SetDuration(const std::string& value, absl::Duration* out) {
  absl::Duration d;
  if (!absl::ParseDuration(value, &d) || d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", value, "' is not a duration such as 500ms, 30s or 10m"));
  }
  *out = d;
  return absl::OkStatus();
}

absl::Status SetBoundedInt(const std::string& value, uint32_t min, uint32_t max, uint32_t* out) {
  uint32_t n = 0;
  if (!absl::SimpleAtoi(value, &n) || n < min || n > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", value, "' is not a whole number from ", min, " to ", max));
  }
  *out = n;
  return absl::OkStatus();
}

absl::Status NonEmpty(const std::string& value) {
  if (value.empty()) return absl::InvalidArgumentError("must not be empty");
  return absl::OkStatus();
}

const std::vector<Setting>& Settings() {
  static const std::vector<Setting> kSettings = {
      {"kubelet-root", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->kubelet_root = v;
         return NonEmpty(v);
       }},
      {"node-name", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->node_name = v;
         return NonEmpty(v);
       }},
      {"collector", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->collector = v;
         return v.empty() ? absl::OkStatus() : CheckHostPort(v);
       }},
      {"collector-tls-ca", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->collector_tls_ca = v;
         return NonEmpty(v);
       }},
      {"collector-tls-cert", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->collector_tls_cert = v;
         return NonEmpty(v);
       }},
      {"collector-tls-key", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->collector_tls_key = v;
         return NonEmpty(v);
       }},
      {"findings-out", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->findings_out = v;
         return NonEmpty(v);
       }},
      {"metrics-address", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->metrics_address = v;
         return CheckHostPort(v);
       }},
      {"apiserver", true, false,
       [](const std::string& v, AgentConfig* c) {
         c->apiservers.push_back(v);
         return CheckHostPort(v);
       }},
      {"state-dir", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->state_dir = v;
         return NonEmpty(v);
       }},
      {"hook-mode", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->hook_mode = v;
         for (const char* mode : {"auto", "lsm", "fentry", "fanotify", "tracepoint"}) {
           if (v == mode) return absl::OkStatus();
         }
         return absl::InvalidArgumentError(
             absl::StrCat("'", v, "' is not one of auto, lsm, fentry, fanotify, tracepoint"));
       }},
      {"log-level", false, false,
       [](const std::string& v, AgentConfig* c) {
         c->log_level = v;
         for (const char* level : {"debug", "info", "warning", "error"}) {
           if (v == level) return absl::OkStatus();
         }
         return absl::InvalidArgumentError(
             absl::StrCat("'", v, "' is not one of debug, info, warning, error"));
       }},
      {"dedup-window", false, true,
       [](const std::string& v, AgentConfig* c) { return SetDuration(v, &c->dedup_window); }},
      {"rescan-interval", false, true,
       [](const std::string& v, AgentConfig* c) {
         absl::Status s = SetDuration(v, &c->rescan_interval);
         if (s.ok() && c->rescan_interval < absl::Seconds(1)) {
           return absl::InvalidArgumentError("must be at least 1s");
         }
         return s;
       }},
      {"spool-max-bytes", false, true,
       [](const std::string& v, AgentConfig* c) {
         // A plain byte count or one with a KiB/MiB/GiB suffix.
         uint64_t multiplier = 1;
         std::string number = v;
         for (auto [suffix, m] : {std::pair<const char*, uint64_t>{"KiB", 1024},
                                  {"MiB", 1024 * 1024},
                                  {"GiB", 1024 * 1024 * 1024}}) {
           if (absl::EndsWith(v, suffix)) {
             multiplier = m;
             number = v.substr(0, v.size() - 3);
           }
         }
         uint64_t n = 0;
         if (!absl::SimpleAtoi(number, &n) || n * multiplier < 8192 ||
             n > (uint64_t{1} << 50) / multiplier) {
           return absl::InvalidArgumentError(
               absl::StrCat("'", v, "' is not a size of at least 8KiB such as 256MiB"));
         }
         c->spool_max_bytes = n * multiplier;
         return absl::OkStatus();
       }},
      {"spool-sync-interval", false, true,
       [](const std::string& v, AgentConfig* c) {
         absl::Status s = SetDuration(v, &c->spool_sync_interval);
         if (s.ok() && c->spool_sync_interval <= absl::ZeroDuration()) {
           return absl::InvalidArgumentError("must be more than 0");
         }
         return s;
       }},
      {"correlation-window", false, true,
       [](const std::string& v, AgentConfig* c) {
         return SetDuration(v, &c->correlation_window);
       }},
      {"cluster-ranges", true, true,
       [](const std::string& v, AgentConfig* c) {
         c->cluster_ranges.push_back(v);
         size_t slash = v.find('/');
         int bits = -1;
         if (slash == std::string::npos || !absl::SimpleAtoi(v.substr(slash + 1), &bits) ||
             bits < 0 || bits > 128) {
           return absl::InvalidArgumentError(absl::StrCat("'", v, "' is not a CIDR range"));
         }
         return absl::OkStatus();
       }},
      {"lineage-depth", false, true,
       [](const std::string& v, AgentConfig* c) {
         return SetBoundedInt(v, 1, 16, &c->lineage_depth);
       }},
      {"argv-bytes", false, true,
       [](const std::string& v, AgentConfig* c) {
         return SetBoundedInt(v, 16, 256, &c->argv_bytes);
       }},
      {"process-table-size", false, true,
       [](const std::string& v, AgentConfig* c) {
         return SetBoundedInt(v, 1024, 1 << 20, &c->process_table_size);
       }},
      {"ring-buffer-bytes", false, true,
       [](const std::string& v, AgentConfig* c) {
         // The kernel wants a power-of-two multiple of the page size.
         absl::Status s = SetBoundedInt(v, 4096, 1u << 30, &c->ring_buffer_bytes);
         if (s.ok() && (c->ring_buffer_bytes & (c->ring_buffer_bytes - 1)) != 0) {
           return absl::InvalidArgumentError(
               absl::StrCat("'", v, "' is not a power of two from 4096 to 1073741824"));
         }
         return s;
       }},
      {"extra-token-paths", true, true,
       [](const std::string& v, AgentConfig* c) {
         c->extra_token_paths.push_back(v);
         return NonEmpty(v);
       }},
      {"host-allowed-executables", true, true,
       [](const std::string& v, AgentConfig* c) {
         c->host_allowed_executables.push_back(v);
         return NonEmpty(v);
       }},
  };
  return kSettings;
}

std::string KeyOf(const char* flag) {
  std::string key = flag;
  for (char& ch : key) {
    if (ch == '-') ch = '_';
  }
  return key;
}

const Setting* FindFlag(absl::string_view flag) {
  for (const Setting& s : Settings()) {
    if (!s.file_only && flag == s.flag) return &s;
  }
  return nullptr;
}

}  // namespace

std::string AgentUsage() {
  return R"(Usage: tokenwatch-agent [FLAGS]

Watches every open of a Kubernetes service-account token on this node and
reports unexpected readers. Works with no flags on a standard node.

  --config FILE             YAML file with any of the settings below (keys use _)
  --kubelet-root DIR        kubelet root directory (default /var/lib/kubelet)
  --node-name NAME          node name (default $NODE_NAME, else the host name)
  --collector HOST:PORT     stream findings to this collector (default: none)
  --collector-tls-ca FILE   verify the collector with this CA (PEM); enables TLS
  --collector-tls-cert FILE client certificate for the collector (PEM)
  --collector-tls-key FILE  its private key (PEM)
  --findings-out PATH|-     JSON lines output, one finding a line (default -)
  --metrics-address H:P     /metrics, /healthz, /readyz (default 0.0.0.0:9750)
  --apiserver HOST:PORT     an API server address to watch (repeatable)
  --state-dir DIR           agent state (default /var/lib/tokenwatch)
  --hook-mode MODE          auto|lsm|fentry|fanotify|tracepoint (default auto)
  --log-level LEVEL         debug|info|warning|error (default info)
  --version                 print the version and exit
  --export-profile[=GLOB]   print the profiles learned in --state-dir as policy YAML
                            (GLOB on namespace/workload) and exit
)";
}

absl::Status LoadAgentConfigFile(const std::string& path, AgentConfig* config) {
  // Say why a file cannot be read (yaml-cpp would only say that it cannot,
  // and a directory reads as an empty stream that throws std::ios failures).
  struct stat st {};
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) != 0) {
    int err = errno;
    if (fd >= 0) close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("config ", path, ": cannot read the file: ", std::strerror(err)));
  }
  close(fd);
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config ", path, ": cannot read the file: ", std::strerror(EISDIR)));
  }
  YAML::Node root;
  // yaml-cpp reports parse errors by throwing; this is the boundary where
  // they become a Status naming the file and line.
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": cannot read the file"));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("config ", path, ":", e.mark.line + 1, ": ", e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("config ", path, ": cannot read the file: ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config ", path, ":", root.Mark().line + 1, ": expected a mapping of keys"));
  }
  for (const auto& entry : root) {
    int line = entry.first.Mark().line + 1;
    std::string key = entry.first.Scalar();
    // Parsed (and its errors reported) by detect::Policy when the agent starts.
    if (key == "policy") continue;
    auto where = [&](int at) { return absl::StrCat("config ", path, ":", at, ": key '", key, "': "); };
    const Setting* setting = nullptr;
    for (const Setting& s : Settings()) {
      if (KeyOf(s.flag) == key) setting = &s;
    }
    if (setting == nullptr) {
      std::vector<std::string> keys;
      for (const Setting& s : Settings()) keys.push_back(KeyOf(s.flag));
      return absl::InvalidArgumentError(absl::StrCat("config ", path, ":", line, ": unknown key '",
                                                     key, "' (known: ", absl::StrJoin(keys, ", "),
                                                     ")"));
    }
    const YAML::Node& value = entry.second;
    std::vector<std::pair<std::string, int>> values;
    if (setting->repeated) {
      if (value.IsScalar()) {
        values.emplace_back(value.Scalar(), value.Mark().line + 1);
      } else if (value.IsSequence()) {
        for (const auto& item : value) {
          if (!item.IsScalar()) {
            return absl::InvalidArgumentError(absl::StrCat(where(item.Mark().line + 1),
                                                           "expected a list of strings"));
          }
          values.emplace_back(item.Scalar(), item.Mark().line + 1);
        }
      } else if (!value.IsNull()) {
        return absl::InvalidArgumentError(absl::StrCat(where(line), "expected a list of strings"));
      }
    } else {
      if (!value.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(where(line), "expected a single value"));
      }
      values.emplace_back(value.Scalar(), value.Mark().line + 1);
    }
    for (const auto& [text, at] : values) {
      absl::Status status = setting->set(text, config);
      if (!status.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(where(at), status.message()));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<AgentConfig> ParseAgentCommandLine(const std::vector<std::string>& args,
                                                  bool* help, bool* version) {
  *help = false;
  *version = false;
  // First pass: split into (flag, value) pairs and find --config.
  std::vector<std::pair<std::string, std::string>> flags;
  std::string config_file;
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      continue;
    }
    if (arg == "--version") {
      *version = true;
      continue;
    }
    if (!absl::ConsumePrefix(&arg, "--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' (flags start with --; see --help)"));
    }
    std::string name, value;
    size_t eq = arg.find('=');
    if (eq != absl::string_view::npos) {
      name = std::string(arg.substr(0, eq));
      value = std::string(arg.substr(eq + 1));
    } else {
      name = std::string(arg);
      if (name != "config" && FindFlag(name) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (see --help)"));
      }
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    }
    if (name == "config") {
      config_file = value;
      continue;
    }
    if (FindFlag(name) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (see --help)"));
    }
    flags.emplace_back(name, value);
  }

  AgentConfig config;
  if (const char* node = std::getenv("NODE_NAME"); node != nullptr && *node != '\0') {
    config.node_name = node;
  } else {
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) == 0) config.node_name = host;
  }
  if (!config_file.empty()) {
    config.config_file = config_file;
    if (absl::Status s = LoadAgentConfigFile(config_file, &config); !s.ok()) return s;
  }
  // A repeated flag on the command line replaces the file's list.
  bool apiservers_from_flags = false;
  for (const auto& [name, value] : flags) {
    const Setting* setting = FindFlag(name);
    if (name == "apiserver" && !apiservers_from_flags) {
      config.apiservers.clear();
      apiservers_from_flags = true;
    }
    absl::Status status = setting->set(value, &config);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", status.message()));
    }
  }
  return config;
}

}  // namespace tokenwatch::agent
