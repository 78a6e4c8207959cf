#include "collector/ctl/format.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tokenwatch::collector::ctl {
namespace {

using tokenwatch::v1::Finding;
using tokenwatch::v1::Process;

// Code points in valid UTF-8 (continuation bytes do not count).
size_t DisplayWidth(absl::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Keeps the first `width` code points, ending in "..." when something was cut.
std::string CutRight(const std::string& s, size_t width) {
  if (DisplayWidth(s) <= width) return s;
  size_t keep = width > 3 ? width - 3 : 0, seen = 0, i = 0;
  for (; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (seen == keep) break;
      ++seen;
    }
  }
  return s.substr(0, i) + "...";
}

// Keeps the last code points: the end of a path (the binary's name) says the most.
std::string CutLeft(const std::string& s, size_t width) {
  size_t total = DisplayWidth(s);
  if (total <= width) return s;
  size_t drop = total - (width > 3 ? width - 3 : 0), seen = 0, i = 0;
  for (; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (seen == drop) break;
      ++seen;
    }
  }
  return "..." + s.substr(i);
}

std::string FormatTimestamp(const google::protobuf::Timestamp& ts) {
  absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

std::string PodName(const tokenwatch::v1::Pod& pod) {
  if (pod.namespace_().empty() && pod.name().empty()) {
    return pod.uid().empty() ? "" : absl::StrCat("pod uid ", Printable(pod.uid()));
  }
  return Printable(absl::StrCat(pod.namespace_(), "/", pod.name()));
}

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

// An argv as a shell would show it: arguments with spaces or quotes are single-quoted.
std::string CommandLine(const Process& p) {
  std::vector<std::string> parts;
  for (const std::string& arg : p.argv()) {
    std::string shown = Printable(arg);
    if (shown.empty() || shown.find_first_of(" \t'\"\\$") != std::string::npos) {
      std::string quoted = "'";
      for (char c : shown) {
        if (c == '\'') {
          quoted += "'\\''";
        } else {
          quoted += c;
        }
      }
      shown = quoted + "'";
    }
    parts.push_back(std::move(shown));
  }
  return absl::StrJoin(parts, " ");
}

std::string ProcessLine(const Process& p) {
  std::string exe = Printable(p.exe().empty() ? p.comm() : p.exe());
  std::string line = absl::StrCat("pid ", p.pid(), "  ", OrDash(exe));
  std::string cmd = CommandLine(p);
  if (!cmd.empty()) absl::StrAppend(&line, "  ", cmd);
  if (p.uid() != 0 || p.gid() != 0) absl::StrAppend(&line, "  uid=", p.uid(), " gid=", p.gid());
  if (p.has_pod()) {
    absl::StrAppend(&line, "  [pod ", OrDash(PodName(p.pod())), "]");
  } else if (!p.in_container()) {
    absl::StrAppend(&line, "  [host]");
  } else {
    absl::StrAppend(&line, "  [container]");
  }
  if (p.exec_session()) absl::StrAppend(&line, "  [exec session]");
  if (p.from_exec()) absl::StrAppend(&line, "  [exec of the line above]");
  return line;
}

const char* TokenKindName(tokenwatch::v1::TokenKind kind) {
  switch (kind) {
    case tokenwatch::v1::TOKEN_KIND_PROJECTED:
      return "projected";
    case tokenwatch::v1::TOKEN_KIND_SECRET:
      return "secret (legacy, never expires)";
    case tokenwatch::v1::TOKEN_KIND_CONFIGURED:
      return "configured path";
    default:
      return "unknown";
  }
}

const char* TargetName(tokenwatch::v1::TargetKind kind) {
  switch (kind) {
    case tokenwatch::v1::TARGET_KIND_APISERVER:
      return "apiserver";
    case tokenwatch::v1::TARGET_KIND_METADATA:
      return "metadata";
    case tokenwatch::v1::TARGET_KIND_OTHER:
      return "other";
    default:
      return "unknown";
  }
}

void Field(std::string* out, absl::string_view name, absl::string_view value) {
  absl::StrAppend(out, "  ", name, ":", std::string(name.size() < 16 ? 16 - name.size() : 1, ' '),
                  value, "\n");
}

}  // namespace

absl::StatusOr<absl::Time> ParseSince(absl::string_view text, absl::Time now) {
  if (text.empty()) return absl::InvalidArgumentError("--since: empty");
  absl::Time t;
  std::string err;
  if (absl::ParseTime(absl::RFC3339_full, std::string(text), &t, &err)) return t;
  absl::Duration d;
  int64_t days = 0;
  if (absl::EndsWith(text, "d") && absl::SimpleAtoi(text.substr(0, text.size() - 1), &days) &&
      days >= 0) {
    d = absl::Hours(24 * days);
  } else if (!absl::ParseDuration(std::string(text), &d)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--since: expected a duration like 10m, 2h or 3d, or an RFC 3339 time, got '", text,
        "'"));
  }
  if (d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("--since: negative duration '", text, "'"));
  }
  return now - d;
}

absl::StatusOr<tokenwatch::v1::Severity> ParseSeverity(absl::string_view text) {
  std::string name = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(name, "SEVERITY_")) name = "SEVERITY_" + name;
  tokenwatch::v1::Severity severity;
  if (!tokenwatch::v1::Severity_Parse(name, &severity) ||
      severity == tokenwatch::v1::SEVERITY_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--severity: expected low, medium, high or critical, got '", text, "'"));
  }
  return severity;
}

std::string SeverityName(tokenwatch::v1::Severity severity) {
  if (severity == tokenwatch::v1::SEVERITY_UNSPECIFIED ||
      !tokenwatch::v1::Severity_IsValid(severity)) {
    return "unspecified";
  }
  return absl::AsciiStrToLower(
      absl::string_view(tokenwatch::v1::Severity_Name(severity)).substr(9));
}

std::string Printable(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      out += '?';
    } else if (c == 0xC2 && i + 1 < text.size() &&
               static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(text[i + 1]) <= 0x9F) {
      // U+0080..U+009F, the C1 controls; some terminals act on U+009B (CSI).
      out += '?';
      ++i;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string FormatTable(const std::vector<Finding>& findings) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back(
      {"TIME", "NODE", "RULE", "SEVERITY", "NAMESPACE/POD", "PROCESS", "COUNT", "SUMMARY"});
  for (const Finding& f : findings) {
    const Process& p = f.process();
    rows.push_back({
        FormatTimestamp(f.has_last_seen() ? f.last_seen() : f.time()),
        CutRight(OrDash(Printable(f.node())), 40),
        OrDash(Printable(f.rule_id())),
        SeverityName(f.severity()),
        CutRight(OrDash(PodName(f.token().owner())), 40),
        CutLeft(OrDash(Printable(p.exe().empty() ? p.comm() : p.exe())), 32),
        absl::StrCat(f.count()),
        CutRight(Printable(f.summary()), 72),
    });
  }
  std::vector<size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], DisplayWidth(row[i]));
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - DisplayWidth(row[i]) + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

std::string FormatFinding(const Finding& f) {
  std::string out = absl::StrCat("Finding ", Printable(f.id()), "\n");
  Field(&out, "Rule", absl::StrCat(Printable(f.rule_id()), " ", Printable(f.rule_name())));
  Field(&out, "Severity", SeverityName(f.severity()));
  // What set or raised it, one reason a line under the first.
  for (int i = 0; i < f.severity_reasons_size(); ++i) {
    std::string reason = Printable(f.severity_reasons(i));
    if (i == 0) {
      Field(&out, "Because", reason);
    } else {
      absl::StrAppend(&out, std::string(2 + 16 + 1, ' '), reason, "\n");
    }
  }
  Field(&out, "Summary", Printable(f.summary()));
  Field(&out, "Node", Printable(f.node()));
  Field(&out, "First seen", FormatTimestamp(f.time()));
  Field(&out, "Last seen", FormatTimestamp(f.has_last_seen() ? f.last_seen() : f.time()));
  Field(&out, "Count", absl::StrCat(f.count()));
  std::vector<std::string> mitre;
  for (const std::string& m : f.mitre()) mitre.push_back(Printable(m));
  Field(&out, "MITRE", OrDash(absl::StrJoin(mitre, ", ")));
  Field(&out, "Hook mode", OrDash(Printable(f.hook_mode())));

  const tokenwatch::v1::Token& token = f.token();
  out += "\nToken\n";
  Field(&out, "Owner pod", OrDash(PodName(token.owner())));
  Field(&out, "Pod UID", OrDash(Printable(token.owner().uid())));
  Field(&out, "Service account", OrDash(Printable(token.service_account())));
  Field(&out, "Kind", TokenKindName(token.kind()));
  Field(&out, "Path", OrDash(Printable(token.host_path())));
  Field(&out, "Expiry", token.has_expiry() ? FormatTimestamp(token.expiry()) : "never");
  std::vector<std::string> audiences;
  for (const std::string& a : token.audiences()) audiences.push_back(Printable(a));
  Field(&out, "Audiences", OrDash(absl::StrJoin(audiences, ", ")));
  if (!token.device().empty() || token.inode() != 0) {
    Field(&out, "File", absl::StrCat("device ", OrDash(Printable(token.device())), " inode ",
                                     token.inode()));
  }

  // ancestors[0] is the parent: print from the oldest ancestor down to the actor.
  out += "\nLineage (oldest first)\n";
  int depth = 0;
  if (f.ancestors_truncated()) {
    out += "  ... (older ancestors not captured)\n";
    depth = 1;
  }
  auto tree_line = [&](const Process& p, bool actor) {
    std::string indent(2 + 3 * depth, ' ');
    absl::StrAppend(&out, indent, depth > 0 ? "`- " : "", ProcessLine(p),
                    actor ? "   <== actor" : "", "\n");
    ++depth;
  };
  for (int i = f.ancestors_size() - 1; i >= 0; --i) tree_line(f.ancestors(i), false);
  tree_line(f.process(), true);
  if (!f.process().container_id().empty()) {
    Field(&out, "Container", Printable(f.process().container_id()));
  }
  if (!f.process().cgroup().empty()) Field(&out, "Cgroup", Printable(f.process().cgroup()));
  if (!f.process().exec_id().empty()) Field(&out, "Exec id", Printable(f.process().exec_id()));

  if (f.has_access()) {
    const tokenwatch::v1::Access& a = f.access();
    out += "\nAccess\n";
    Field(&out, "Path", a.path() == tokenwatch::v1::ACCESS_PATH_IO_URING ? "io_uring"
                        : a.path() == tokenwatch::v1::ACCESS_PATH_SYSCALL ? "syscall"
                                                                          : "unknown");
    Field(&out, "Syscall", OrDash(Printable(a.syscall())));
    Field(&out, "Flags", a.flags_text().empty() ? absl::StrCat("0x", absl::Hex(a.flags()))
                                                : Printable(a.flags_text()));
    if (a.has_time()) Field(&out, "Time", FormatTimestamp(a.time()));
  }

  out += "\nConnections\n";
  if (f.connections_size() == 0) out += "  none\n";
  for (const tokenwatch::v1::Connection& c : f.connections()) {
    std::string address = Printable(c.address());
    if (address.find(':') != std::string::npos) address = absl::StrCat("[", address, "]");
    absl::StrAppend(&out, "  ", c.has_time() ? FormatTimestamp(c.time()) : "-", "  ", address,
                    ":", c.port(), "  ", TargetName(c.target()), "  pid ", c.pid(), "\n");
  }
  return out;
}

}  // namespace tokenwatch::collector::ctl
