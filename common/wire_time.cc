#include "common/wire_time.h"

#include "absl/strings/str_cat.h"

namespace tokenwatch {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

}  // namespace

absl::Status ValidateTimestamp(absl::string_view field, const google::protobuf::Timestamp& ts) {
  if (ts.nanos() < 0 || ts.nanos() > 999999999) return Invalid(field, "nanos out of range");
  if (ts.seconds() < -62135596800 || ts.seconds() > 253402300799) {
    return Invalid(field, "outside years 1..9999");
  }
  return absl::OkStatus();
}

absl::Status ValidateObservedTime(absl::string_view field, const google::protobuf::Timestamp& ts,
                                  absl::Time now) {
  if (absl::Status s = ValidateTimestamp(field, ts); !s.ok()) return s;
  const absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  if (t < kEarliestSaneTime) return Invalid(field, "before the year 2000");
  if (t > now + kMaxClockSkew) {
    return Invalid(field, absl::StrCat("more than ", absl::FormatDuration(kMaxClockSkew),
                                       " in the future"));
  }
  return absl::OkStatus();
}

}  // namespace tokenwatch
