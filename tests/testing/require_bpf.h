#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace tokenwatch::testing {

// True when the suite must not skip BPF tests (CI sets TOKENWATCH_REQUIRE_BPF=1).
inline bool BpfRequired() {
  const char* v = std::getenv("TOKENWATCH_REQUIRE_BPF");
  return v != nullptr && std::string(v) == "1";
}

}  // namespace tokenwatch::testing

// Skips a BPF test when it cannot run here (not root), unless BPF is
// required, in which case the test fails with the reason.
#define TW_REQUIRE_ROOT_FOR_BPF()                                                  \
  do {                                                                             \
    if (geteuid() != 0) {                                                          \
      if (::tokenwatch::testing::BpfRequired()) {                                  \
        FAIL() << "TOKENWATCH_REQUIRE_BPF=1 but the test does not run as root";   \
      }                                                                            \
      GTEST_SKIP() << "needs root for BPF";                                        \
    }                                                                              \
  } while (0)

// For a probe that failed to load: skip, or fail when BPF is required.
#define TW_SKIP_OR_FAIL_ON_BPF_ERROR(status)                                       \
  do {                                                                             \
    if (!(status).ok()) {                                                          \
      if (::tokenwatch::testing::BpfRequired()) {                                  \
        FAIL() << "BPF unavailable but required: " << (status).message();          \
      }                                                                            \
      GTEST_SKIP() << "BPF unavailable: " << (status).message();                   \
    }                                                                              \
  } while (0)
