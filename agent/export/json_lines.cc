#include "agent/export/json_lines.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace tokenwatch::exporting {

absl::StatusOr<std::string> FindingToJson(const v1::Finding& finding) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = false;  // lowerCamelCase, the proto3 JSON mapping
  auto status = google::protobuf::util::MessageToJsonString(finding, &json, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("finding to JSON: ", status.ToString()));
  }
  return json;
}

absl::StatusOr<std::unique_ptr<JsonLinesWriter>> JsonLinesWriter::Open(const std::string& path) {
  if (path == "-") return std::unique_ptr<JsonLinesWriter>(new JsonLinesWriter(stdout, false));
  FILE* file = std::fopen(path.c_str(), "ae");
  if (file == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--findings-out ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<JsonLinesWriter>(new JsonLinesWriter(file, true));
}

JsonLinesWriter::~JsonLinesWriter() {
  absl::MutexLock lock(&mu_);
  if (owned_) std::fclose(file_);
}

absl::Status JsonLinesWriter::Write(const v1::Finding& finding) {
  auto json = FindingToJson(finding);
  if (!json.ok()) return json.status();
  json->push_back('\n');
  absl::MutexLock lock(&mu_);
  if (std::fwrite(json->data(), 1, json->size(), file_) != json->size() ||
      std::fflush(file_) != 0) {
    return absl::UnavailableError(absl::StrCat("write findings: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace tokenwatch::exporting
