#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::exporting {

// Writes findings as JSON lines (the proto3 JSON mapping of Finding, one
// finding a line) to a file, appending, or to stdout for "-". Each line is
// flushed as written, so a node without a collector still keeps every
// finding. Thread-safe.
class JsonLinesWriter {
 public:
  static absl::StatusOr<std::unique_ptr<JsonLinesWriter>> Open(const std::string& path);
  ~JsonLinesWriter();

  absl::Status Write(const v1::Finding& finding);

 private:
  JsonLinesWriter(FILE* file, bool owned) : file_(file), owned_(owned) {}

  absl::Mutex mu_;
  FILE* file_ ABSL_GUARDED_BY(mu_);
  bool owned_;
};

// The JSON of one finding, as written in a line (no trailing newline).
absl::StatusOr<std::string> FindingToJson(const v1::Finding& finding);

}  // namespace tokenwatch::exporting
