#include "collector/validate.h"

#include <cstdint>
#include <string>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/wire_time.h"

namespace tokenwatch::collector {
namespace {

using tokenwatch::v1::Finding;
using tokenwatch::v1::Process;

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status CheckString(absl::string_view field, const std::string& value) {
  if (value.size() > kMaxStringBytes) {
    return Invalid(field, absl::StrCat("longer than ", kMaxStringBytes, " bytes"));
  }
  return absl::OkStatus();
}

template <typename Repeated>
absl::Status CheckStrings(absl::string_view field, const Repeated& values, int max_entries) {
  if (values.size() > max_entries) {
    return Invalid(field, absl::StrCat("more than ", max_entries, " entries"));
  }
  for (int i = 0; i < values.size(); ++i) {
    if (absl::Status s = CheckString(absl::StrCat(field, "[", i, "]"), values.Get(i)); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPod(absl::string_view field, const tokenwatch::v1::Pod& pod) {
  for (auto [name, value] : {std::pair<const char*, const std::string*>{"namespace", &pod.namespace_()},
                             {"name", &pod.name()},
                             {"uid", &pod.uid()}}) {
    if (absl::Status s = CheckString(absl::StrCat(field, ".", name), *value); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CheckProcess(absl::string_view field, const Process& p) {
  for (auto [name, value] : {std::pair<const char*, const std::string*>{"exec_id", &p.exec_id()},
                             {"exe", &p.exe()},
                             {"comm", &p.comm()},
                             {"container_id", &p.container_id()},
                             {"cgroup", &p.cgroup()}}) {
    if (absl::Status s = CheckString(absl::StrCat(field, ".", name), *value); !s.ok()) return s;
  }
  if (absl::Status s = CheckStrings(absl::StrCat(field, ".argv"), p.argv(), kMaxArgv); !s.ok()) {
    return s;
  }
  if (p.has_start_time()) {
    if (absl::Status s = ValidateTimestamp(absl::StrCat(field, ".start_time"), p.start_time());
        !s.ok()) {
      return s;
    }
  }
  return CheckPod(absl::StrCat(field, ".pod"), p.pod());
}

}  // namespace

bool IsUuid(absl::string_view id) {
  if (id.size() != 36) return false;
  for (size_t i = 0; i < id.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (id[i] != '-') return false;
    } else if (!absl::ascii_isxdigit(static_cast<unsigned char>(id[i]))) {
      return false;
    }
  }
  return true;
}

bool IsRuleId(absl::string_view rule_id) {
  return rule_id.size() == 5 && rule_id[0] == 'T' && rule_id[1] == 'W' &&
         absl::ascii_isdigit(static_cast<unsigned char>(rule_id[2])) &&
         absl::ascii_isdigit(static_cast<unsigned char>(rule_id[3])) &&
         absl::ascii_isdigit(static_cast<unsigned char>(rule_id[4]));
}

absl::Status ValidateFinding(const Finding& f, absl::Time now) {
  if (!IsUuid(f.id())) return Invalid("finding.id", "not a UUID");
  if (f.node().empty()) return Invalid("finding.node", "empty");
  if (!IsRuleId(f.rule_id())) return Invalid("finding.rule_id", "not of the form TW<3 digits>");
  if (f.severity() == tokenwatch::v1::SEVERITY_UNSPECIFIED ||
      !tokenwatch::v1::Severity_IsValid(f.severity())) {
    return Invalid("finding.severity", "unspecified or unknown");
  }
  if (f.count() < 1) return Invalid("finding.count", "must be at least 1");
  if (!f.has_time()) return Invalid("finding.time", "not set");
  if (absl::Status s = ValidateObservedTime("finding.time", f.time(), now); !s.ok()) return s;
  if (f.has_last_seen()) {
    if (absl::Status s = ValidateObservedTime("finding.last_seen", f.last_seen(), now);
        !s.ok()) {
      return s;
    }
    if (f.last_seen().seconds() < f.time().seconds() ||
        (f.last_seen().seconds() == f.time().seconds() &&
         f.last_seen().nanos() < f.time().nanos())) {
      return Invalid("finding.last_seen", "before finding.time");
    }
  }

  for (auto [name, value] :
       {std::pair<const char*, const std::string*>{"finding.node", &f.node()},
        {"finding.rule_name", &f.rule_name()},
        {"finding.summary", &f.summary()},
        {"finding.hook_mode", &f.hook_mode()},
        {"finding.token.host_path", &f.token().host_path()},
        {"finding.token.service_account", &f.token().service_account()},
        {"finding.token.device", &f.token().device()},
        {"finding.access.syscall", &f.access().syscall()},
        {"finding.access.flags_text", &f.access().flags_text()}}) {
    if (absl::Status s = CheckString(name, *value); !s.ok()) return s;
  }
  if (absl::Status s = CheckStrings("finding.mitre", f.mitre(), kMaxListEntries); !s.ok()) {
    return s;
  }
  if (absl::Status s =
          CheckStrings("finding.severity_reasons", f.severity_reasons(), kMaxListEntries);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          CheckStrings("finding.token.audiences", f.token().audiences(), kMaxListEntries);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckPod("finding.token.owner", f.token().owner()); !s.ok()) return s;
  if (!tokenwatch::v1::TokenKind_IsValid(f.token().kind())) {
    return Invalid("finding.token.kind", "unknown value");
  }
  if (!tokenwatch::v1::AccessPath_IsValid(f.access().path())) {
    return Invalid("finding.access.path", "unknown value");
  }
  if (f.token().has_expiry()) {
    if (absl::Status s = ValidateTimestamp("finding.token.expiry", f.token().expiry());
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckProcess("finding.process", f.process()); !s.ok()) return s;
  if (f.has_reader()) {
    if (absl::Status s = CheckProcess("finding.reader", f.reader()); !s.ok()) return s;
  }
  if (f.ancestors_size() > kMaxAncestors) {
    return Invalid("finding.ancestors", absl::StrCat("more than ", kMaxAncestors, " entries"));
  }
  for (int i = 0; i < f.ancestors_size(); ++i) {
    if (absl::Status s = CheckProcess(absl::StrCat("finding.ancestors[", i, "]"), f.ancestors(i));
        !s.ok()) {
      return s;
    }
  }
  if (f.access().has_time()) {
    if (absl::Status s = ValidateTimestamp("finding.access.time", f.access().time()); !s.ok()) {
      return s;
    }
  }
  if (f.connections_size() > kMaxConnections) {
    return Invalid("finding.connections",
                   absl::StrCat("more than ", kMaxConnections, " entries"));
  }
  for (int i = 0; i < f.connections_size(); ++i) {
    const auto& c = f.connections(i);
    std::string field = absl::StrCat("finding.connections[", i, "]");
    if (absl::Status s = CheckString(absl::StrCat(field, ".address"), c.address()); !s.ok()) {
      return s;
    }
    if (c.port() > 65535) return Invalid(absl::StrCat(field, ".port"), "above 65535");
    if (!tokenwatch::v1::TargetKind_IsValid(c.target())) {
      return Invalid(absl::StrCat(field, ".target"), "unknown value");
    }
    if (c.has_time()) {
      if (absl::Status s = ValidateTimestamp(absl::StrCat(field, ".time"), c.time()); !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateHello(const tokenwatch::v1::Hello& hello) {
  if (hello.node().empty()) return Invalid("hello.node", "empty");
  if (hello.agent_id().empty()) return Invalid("hello.agent_id", "empty");
  for (auto [name, value] :
       {std::pair<const char*, const std::string*>{"hello.node", &hello.node()},
        {"hello.agent_id", &hello.agent_id()},
        {"hello.version", &hello.version()}}) {
    if (absl::Status s = CheckString(name, *value); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ValidateReportRequest(const tokenwatch::v1::ReportRequest& request, absl::Time now) {
  switch (request.kind_case()) {
    case tokenwatch::v1::ReportRequest::kHello:
      return ValidateHello(request.hello());
    case tokenwatch::v1::ReportRequest::kFinding: {
      const uint64_t seq = request.finding().sequence();
      if (seq == 0) return Invalid("finding.sequence", "must be at least 1");
      if (!request.finding().has_finding()) return Invalid("finding.finding", "not set");
      if (absl::Status s = ValidateFinding(request.finding().finding(), now); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": ", s.message()));
      }
      return absl::OkStatus();
    }
    case tokenwatch::v1::ReportRequest::kGap:
      if (request.gap().through() == 0) return Invalid("gap.through", "must be at least 1");
      return absl::OkStatus();
    default:
      return Invalid("request", "neither hello, finding nor gap");
  }
}

absl::StatusOr<tokenwatch::v1::ReportRequest> ParseReportRequest(absl::string_view bytes,
                                                                absl::Time now) {
  tokenwatch::v1::ReportRequest request;
  if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError("request: not a serialized ReportRequest");
  }
  if (absl::Status s = ValidateReportRequest(request, now); !s.ok()) return s;
  return request;
}

absl::string_view FindingBytesIn(absl::string_view request) {
  using google::protobuf::internal::WireFormatLite;
  constexpr uint32_t kSequencedFindingTag =
      WireFormatLite::MakeTag(tokenwatch::v1::ReportRequest::kFindingFieldNumber,
                              WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
  constexpr uint32_t kFindingTag =
      WireFormatLite::MakeTag(tokenwatch::v1::SequencedFinding::kFindingFieldNumber,
                              WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(request.data()),
                                            static_cast<int>(request.size()));
  uint32_t length = 0;
  if (in.ReadTag() != kSequencedFindingTag || !in.ReadVarint32(&length) ||
      static_cast<size_t>(in.CurrentPosition()) + length != request.size()) {
    return {};
  }
  absl::string_view found;
  int occurrences = 0;
  while (static_cast<size_t>(in.CurrentPosition()) < request.size()) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return {};
    if (tag == kFindingTag) {
      if (!in.ReadVarint32(&length)) return {};
      const size_t at = static_cast<size_t>(in.CurrentPosition());
      if (length > request.size() - at || !in.Skip(static_cast<int>(length))) return {};
      found = request.substr(at, length);
      ++occurrences;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return {};
    }
  }
  return occurrences == 1 ? found : absl::string_view();
}

namespace {

absl::Status CheckFilters(tokenwatch::v1::Severity min_severity, const std::string& rule_id,
                          const std::string& namespace_name, const std::string& node,
                          const std::string& pod, FindingQuery* query) {
  if (!tokenwatch::v1::Severity_IsValid(min_severity)) {
    return Invalid("min_severity", "unknown severity");
  }
  for (auto [name, value] : {std::pair<const char*, const std::string*>{"rule_id", &rule_id},
                             {"namespace", &namespace_name},
                             {"node", &node},
                             {"pod", &pod}}) {
    if (absl::Status s = CheckString(name, *value); !s.ok()) return s;
  }
  query->min_severity = min_severity;
  query->rule_id = rule_id;
  query->namespace_name = namespace_name;
  query->node = node;
  query->pod = pod;
  return absl::OkStatus();
}

absl::StatusOr<absl::Time> QueryTime(absl::string_view field,
                                     const google::protobuf::Timestamp& ts) {
  if (absl::Status s = ValidateTimestamp(field, ts); !s.ok()) return s;
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

}  // namespace

absl::StatusOr<FindingQuery> QueryFromRequest(const tokenwatch::v1::ListFindingsRequest& r) {
  FindingQuery query;
  if (absl::Status s = CheckFilters(r.min_severity(), r.rule_id(), r.namespace_(), r.node(),
                                    r.pod(), &query);
      !s.ok()) {
    return s;
  }
  if (r.has_since()) {
    absl::StatusOr<absl::Time> t = QueryTime("since", r.since());
    if (!t.ok()) return t.status();
    query.since = *t;
  }
  if (r.has_until()) {
    absl::StatusOr<absl::Time> t = QueryTime("until", r.until());
    if (!t.ok()) return t.status();
    query.until = *t;
  }
  if (absl::Status s = CheckString("page_token", r.page_token()); !s.ok()) return s;
  query.page_token = r.page_token();
  query.limit = r.limit();
  return query;
}

absl::StatusOr<FindingQuery> QueryFromRequest(const tokenwatch::v1::WatchFindingsRequest& r) {
  FindingQuery query;
  if (absl::Status s = CheckFilters(r.min_severity(), r.rule_id(), r.namespace_(), r.node(),
                                    r.pod(), &query);
      !s.ok()) {
    return s;
  }
  return query;
}

}  // namespace tokenwatch::collector
