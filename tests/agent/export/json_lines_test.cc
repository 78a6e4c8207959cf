#include "agent/export/json_lines.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "google/protobuf/util/json_util.h"

namespace tokenwatch::exporting {
namespace {

TEST(JsonLinesWriter, AppendsOneParsableFindingPerLine) {
  std::string path = ::testing::TempDir() + "/findings.jsonl";
  std::remove(path.c_str());
  {
    auto writer = JsonLinesWriter::Open(path);
    ASSERT_TRUE(writer.ok());
    for (int i = 1; i <= 3; ++i) {
      v1::Finding f;
      f.set_id("id-" + std::to_string(i));
      f.set_rule_id("TW003");
      f.set_count(static_cast<uint64_t>(i));
      ASSERT_TRUE((*writer)->Write(f).ok());
    }
  }
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    v1::Finding back;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(line, &back).ok()) << line;
    EXPECT_EQ(back.count(), static_cast<uint64_t>(n));
    EXPECT_EQ(back.rule_id(), "TW003");
  }
  EXPECT_EQ(n, 3);
}

TEST(JsonLinesWriter, UnwritablePathIsAClearError) {
  auto writer = JsonLinesWriter::Open("/nonexistent-dir/findings.jsonl");
  ASSERT_FALSE(writer.ok());
  EXPECT_NE(writer.status().message().find("--findings-out /nonexistent-dir/findings.jsonl"),
            std::string::npos);
}

}  // namespace
}  // namespace tokenwatch::exporting
