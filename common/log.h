#pragma once

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace tokenwatch {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Sets the lowest level that is printed (default kInfo).
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

// Writes one line to stderr: "<RFC3339 time> <level> <message>". Thread-safe.
// Callers never pass token contents: log the claims, never the token.
void LogLine(LogLevel level, absl::string_view message);

template <typename... Args>
void Logf(LogLevel level, const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (LogEnabled(level)) LogLine(level, absl::StrFormat(format, args...));
}

}  // namespace tokenwatch
