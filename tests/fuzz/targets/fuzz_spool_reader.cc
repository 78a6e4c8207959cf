// Fuzzes the agent's spool reader: segment bytes as found on disk after a crash, a full disk or
// tampering. The scanner must never read outside the input or crash, every record it returns
// must lie inside the input, and the Spool must open such a segment, replay and ack it.
//
// Input: byte 0 picks the mode. Even: the rest is a raw segment. Odd: the rest is cut into
// payloads (each prefixed by a length byte) that are framed with valid checksums, so the fuzzer
// reaches the protobuf parsing and sequence checks behind the CRC; byte 1 then names a byte of
// the framed segment to flip.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "agent/export/spool.h"

namespace {

using tokenwatch::exporting::EncodeSpoolRecord;
using tokenwatch::exporting::ScanSpoolSegment;
using tokenwatch::exporting::Spool;
using tokenwatch::exporting::SpoolScan;

std::string g_dir;

void WriteFile(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

std::string Framed(const uint8_t* data, size_t size) {
  std::string out;
  size_t i = 0;
  while (i < size) {
    size_t n = std::min<size_t>(data[i], size - i - 1);
    out += EncodeSpoolRecord(std::string(reinterpret_cast<const char*>(data + i + 1), n));
    i += 1 + n;
  }
  return out;
}

// Seeds: a valid segment of real findings, one with a flipped byte, one torn.
void WriteSeeds(const std::string& dir) {
  mkdir(dir.c_str(), 0700);
  std::string segment;
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    tokenwatch::v1::SequencedFinding item;
    item.set_sequence(seq);
    item.mutable_finding()->set_id("1b4e28ba-2fa1-11d2-883f-0016d3cca427");
    item.mutable_finding()->set_rule_id("TW001");
    item.mutable_finding()->set_summary("seed");
    segment += EncodeSpoolRecord(item.SerializeAsString());
  }
  WriteFile(dir + "/valid", std::string(1, '\0') + segment);
  std::string flipped = segment;
  flipped[flipped.size() / 2] ^= 0x10;
  WriteFile(dir + "/flipped", std::string(1, '\0') + flipped);
  WriteFile(dir + "/torn", std::string(1, '\0') + segment.substr(0, segment.size() - 5));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("TW_FUZZ_WRITE_SEEDS")) WriteSeeds(seeds);
  char tmpl[] = "/tmp/tw-fuzz-spool-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) std::abort();
  g_dir = tmpl;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string segment;
  if (data[0] % 2 == 0) {
    segment.assign(reinterpret_cast<const char*>(data + 1), size - 1);
  } else if (size >= 2) {
    segment = Framed(data + 2, size - 2);
    if (!segment.empty()) segment[data[1] % segment.size()] ^= 0x01;
  }

  SpoolScan scan = ScanSpoolSegment(segment);
  for (const SpoolScan::Record& r : scan.records) {
    if (r.offset + r.size > segment.size() || r.payload.data() < segment.data() ||
        r.payload.data() + r.payload.size() > segment.data() + segment.size()) {
      std::abort();
    }
  }

  // The same bytes as a segment left by an earlier run.
  const std::string spool_dir = g_dir + "/spool";
  mkdir(spool_dir.c_str(), 0700);
  unlink((spool_dir + "/acked").c_str());
  WriteFile(spool_dir + "/00000000000000000001.seg", segment);
  Spool::Options options;
  options.dir = spool_dir;
  options.max_bytes = 1 << 20;
  auto spool = Spool::Open(options);
  if (!spool.ok()) std::abort();
  auto items = (*spool)->ReadAfter(0, 1 << 20);
  uint64_t previous = 0;
  for (const auto& item : items) {
    if (item.sequence() <= previous) std::abort();  // replay is strictly in order
    previous = item.sequence();
  }
  if (items.size() > scan.records.size()) std::abort();
  (*spool)->Ack(previous);
  if ((*spool)->stats().unacked != 0) std::abort();
  return 0;
}
