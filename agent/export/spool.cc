#include "agent/export/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace tokenwatch::exporting {
namespace {

constexpr char kSegmentSuffix[] = ".seg";
constexpr char kAckedFile[] = "acked";
constexpr char kLostFile[] = "lost";

uint32_t LoadLe32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return uint32_t{u[0]} | uint32_t{u[1]} << 8 | uint32_t{u[2]} << 16 | uint32_t{u[3]} << 24;
}

void StoreLe32(uint32_t v, char* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

// The record at `offset`, if one with a valid checksum starts there.
bool RecordAt(absl::string_view bytes, size_t offset, SpoolScan::Record* out) {
  if (bytes.size() - offset < kSpoolRecordHeaderBytes) return false;
  const char* p = bytes.data() + offset;
  if (std::memcmp(p, kSpoolRecordMagic, 4) != 0) return false;
  const uint32_t length = LoadLe32(p + 4);
  if (length > kMaxSpoolPayloadBytes ||
      length > bytes.size() - offset - kSpoolRecordHeaderBytes) {
    return false;
  }
  const uint32_t crc = SpoolRecordChecksum(absl::string_view(p + 4, 4),
                                           absl::string_view(p + kSpoolRecordHeaderBytes, length));
  if (crc != LoadLe32(p + 8)) return false;
  out->offset = offset;
  out->size = kSpoolRecordHeaderBytes + length;
  out->payload = absl::string_view(p + kSpoolRecordHeaderBytes, length);
  return true;
}

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::UnavailableError(absl::StrCat("spool: ", what, " ", path, ": ",
                                             std::strerror(errno)));
}

bool WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

void SyncDirectory(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

bool PreadAll(int fd, char* buf, size_t size, uint64_t offset) {
  while (size > 0) {
    ssize_t n = pread(fd, buf, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

}  // namespace

uint32_t SpoolRecordChecksum(absl::string_view length_bytes, absl::string_view payload) {
  uLong crc = crc32_z(0L, Z_NULL, 0);
  crc = crc32_z(crc, reinterpret_cast<const Bytef*>(length_bytes.data()), length_bytes.size());
  crc = crc32_z(crc, reinterpret_cast<const Bytef*>(payload.data()), payload.size());
  return static_cast<uint32_t>(crc);
}

std::string EncodeSpoolRecord(absl::string_view payload) {
  std::string out(kSpoolRecordHeaderBytes + payload.size(), '\0');
  std::memcpy(out.data(), kSpoolRecordMagic, 4);
  StoreLe32(static_cast<uint32_t>(payload.size()), out.data() + 4);
  std::memcpy(out.data() + kSpoolRecordHeaderBytes, payload.data(), payload.size());
  StoreLe32(SpoolRecordChecksum(absl::string_view(out.data() + 4, 4), payload), out.data() + 8);
  return out;
}

SpoolScan ScanSpoolSegment(absl::string_view bytes) {
  SpoolScan scan;
  size_t offset = 0;
  bool in_damage = false;
  while (offset < bytes.size()) {
    SpoolScan::Record record;
    if (RecordAt(bytes, offset, &record)) {
      scan.records.push_back(record);
      offset += record.size;
      in_damage = false;
      continue;
    }
    // Count a damaged stretch once, then look for the next magic.
    if (!in_damage) ++scan.corrupt;
    in_damage = true;
    const size_t next = bytes.find(absl::string_view(kSpoolRecordMagic, 4), offset + 1);
    if (next == absl::string_view::npos) break;
    offset = next;
  }
  return scan;
}

absl::StatusOr<std::unique_ptr<Spool>> Spool::Open(Options options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("spool: no directory");
  if (options.max_bytes < 8192) {
    return absl::InvalidArgumentError("spool: max size must be at least 8 KiB");
  }
  if (options.segment_bytes == 0) {
    options.segment_bytes =
        std::clamp<uint64_t>(options.max_bytes / 16, 4096, uint64_t{16} * 1024 * 1024);
  }
  // At least two segments fit, so dropping the oldest always frees room for the active one.
  options.segment_bytes = std::min(options.segment_bytes, options.max_bytes / 2);
  std::unique_ptr<Spool> spool(new Spool(std::move(options)));
  absl::MutexLock lock(&spool->mu_);
  if (absl::Status s = spool->Load(); !s.ok()) return s;
  return spool;
}

Spool::~Spool() {
  absl::MutexLock lock(&mu_);
  if (back_dirty_ && !segments_.empty()) fdatasync(segments_.back().fd);
  if (lost_dirty_) PersistLostLocked().IgnoreError();
  for (Segment& segment : segments_) close(segment.fd);
  if (acked_fd_ >= 0) close(acked_fd_);
}

absl::Status Spool::Load() {
  const std::string& dir = options_.dir;
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return Errno("create", dir);

  const std::string acked_path = absl::StrCat(dir, "/", kAckedFile);
  acked_fd_ = open(acked_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (acked_fd_ < 0) return Errno("open", acked_path);
  char buf[32] = {};
  ssize_t n = pread(acked_fd_, buf, sizeof(buf) - 1, 0);
  if (n > 0) {
    uint64_t acked = 0;
    // A damaged watermark only costs re-sends, which the collector absorbs.
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buf, n)), &acked)) {
      acked_ = acked;
    }
  }
  last_sequence_ = acked_;
  LoadLostLocked();

  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return Errno("list", dir);
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    if (absl::EndsWith(e->d_name, kSegmentSuffix)) names.emplace_back(e->d_name);
  }
  closedir(d);
  // Names are the zero-padded first sequence number, so name order is delivery order.
  std::sort(names.begin(), names.end());

  // Sequence numbers only grow; a record that goes back is not ours to trust.
  uint64_t previous = 0;
  for (const std::string& name : names) {
    Segment segment;
    segment.name = name;
    segment.path = absl::StrCat(dir, "/", name);
    segment.fd = open(segment.path.c_str(), O_RDWR | O_CLOEXEC);
    if (segment.fd < 0) return Errno("open", segment.path);
    struct stat st;
    if (fstat(segment.fd, &st) != 0) {
      close(segment.fd);
      return Errno("stat", segment.path);
    }
    std::string bytes(static_cast<size_t>(st.st_size), '\0');
    if (!PreadAll(segment.fd, bytes.data(), bytes.size(), 0)) {
      close(segment.fd);
      return Errno("read", segment.path);
    }
    SpoolScan scan = ScanSpoolSegment(bytes);
    uint64_t corrupt = scan.corrupt;
    tokenwatch::v1::SequencedFinding item;
    for (const SpoolScan::Record& record : scan.records) {
      if (!item.ParseFromArray(record.payload.data(), static_cast<int>(record.payload.size())) ||
          item.sequence() == 0 || item.sequence() <= previous) {
        ++corrupt;
        continue;
      }
      previous = item.sequence();
      last_sequence_ = std::max(last_sequence_, item.sequence());
      if (item.sequence() <= acked_) continue;
      segment.entries.push_back(
          Entry{item.sequence(), record.offset, static_cast<uint32_t>(record.size)});
    }
    // Damage an earlier run counted (and persisted) is still on disk: count only what is new.
    uint64_t& counted = counted_corrupt_[name];
    if (corrupt > counted) {
      lost_.corrupt += corrupt - counted;
      corrupt_total_ += corrupt - counted;
      counted = corrupt;
      lost_dirty_ = true;
    }
    segment.bytes = bytes.size();
    // Nothing left to deliver: the file goes, once the loss it shows is on disk.
    if (segment.entries.empty() && LossDurableLocked(/*may_keep=*/true)) {
      close(segment.fd);
      unlink(segment.path.c_str());
      continue;
    }
    total_bytes_ += segment.bytes;
    segments_.push_back(std::move(segment));
  }
  back_active_ = false;
  // Segments gone since (acked, dropped, emptied above) need no memory of their damage.
  for (auto it = counted_corrupt_.begin(); it != counted_corrupt_.end();) {
    const bool on_disk = std::any_of(segments_.begin(), segments_.end(),
                                     [&](const Segment& s) { return s.name == it->first; });
    it = on_disk && it->second > 0 ? std::next(it) : counted_corrupt_.erase(it);
  }
  // A failure is counted and logged, and retried at the next Sync: the damage stays on disk.
  if (lost_dirty_) PersistLostLocked().IgnoreError();
  return absl::OkStatus();
}

void Spool::LoadLostLocked() {
  // "dropped N", "corrupt N" and "counted <segment> N" lines. A damaged file costs the counts it
  // held, nothing else: the spool still opens, says so once, and writes a clean file.
  const std::string path = absl::StrCat(options_.dir, "/", kLostFile);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // a new spool, or nothing ever lost
  constexpr size_t kMaxLostFileBytes = 1 << 20;
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0 && text.size() <= kMaxLostFileBytes) {
    text.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  bool damaged = n < 0 || text.size() > kMaxLostFileBytes;
  bool has_dropped = false, has_corrupt = false;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    uint64_t value = 0;
    if (f.size() == 2 && f[0] == "dropped" && absl::SimpleAtoi(f[1], &value)) {
      lost_.dropped = value;
      has_dropped = true;
    } else if (f.size() == 2 && f[0] == "corrupt" && absl::SimpleAtoi(f[1], &value)) {
      lost_.corrupt = value;
      has_corrupt = true;
    } else if (f.size() == 3 && f[0] == "counted" && absl::EndsWith(f[1], kSegmentSuffix) &&
               absl::SimpleAtoi(f[2], &value)) {
      counted_corrupt_[std::string(f[1])] = value;
    } else {
      damaged = true;
    }
  }
  // Every write has both totals, so a file without them was cut short.
  if (!damaged && has_dropped && has_corrupt) return;
  lost_file_damaged_ = true;
  lost_dirty_ = true;
  Logf(LogLevel::kWarning,
       "spool: %s is damaged; losses it recorded and not yet reported may never be reported "
       "(kept %d dropped, %d damaged)",
       path, lost_.dropped, lost_.corrupt);
}

absl::Status Spool::PersistLostLocked() {
  std::string text = absl::StrCat("dropped ", lost_.dropped, "\ncorrupt ", lost_.corrupt, "\n");
  for (const auto& [name, n] : counted_corrupt_) {
    absl::StrAppend(&text, "counted ", name, " ", n, "\n");
  }
  // Written aside and renamed over, so a crash leaves the old counts or the new, never a mix.
  const std::string path = absl::StrCat(options_.dir, "/", kLostFile);
  const std::string tmp = absl::StrCat(path, ".tmp");
  const char* failed = nullptr;  // the step that failed, errno saved in `error`
  int error = 0;
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    failed = "create";
    error = errno;
  } else {
    if (!WriteAll(fd, text) || fdatasync(fd) != 0) {
      failed = "write";
      error = errno;
    }
    close(fd);
    if (failed == nullptr && rename(tmp.c_str(), path.c_str()) != 0) {
      failed = "rename";
      error = errno;
    }
    if (failed != nullptr) unlink(tmp.c_str());
  }
  if (failed == nullptr) {
    SyncDirectory(options_.dir);
    lost_dirty_ = false;
    lost_write_failing_ = false;
    return absl::OkStatus();
  }
  lost_dirty_ = true;
  ++lost_write_failures_;
  const std::string message =
      absl::StrCat("spool: ", failed, " ", tmp, ": ", std::strerror(error));
  if (!lost_write_failing_) {
    Logf(LogLevel::kWarning, "%s; the loss counts stay in memory until a write succeeds", message);
  }
  lost_write_failing_ = true;
  // Out of space, unlinking a segment is what makes room for the next write.
  if (error == ENOSPC || error == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::UnavailableError(message);
}

bool Spool::LossDurableLocked(bool may_keep) {
  if (!lost_dirty_) return true;
  absl::Status s = PersistLostLocked();
  return s.ok() || !may_keep || absl::IsResourceExhausted(s);
}

absl::Status Spool::StartSegmentLocked(uint64_t first_sequence) {
  if (back_active_ && back_dirty_) fdatasync(segments_.back().fd);
  Segment segment;
  segment.name = absl::StrFormat("%020d%s", first_sequence, kSegmentSuffix);
  segment.path = absl::StrCat(options_.dir, "/", segment.name);
  segment.fd = open(segment.path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC,
                    0600);
  if (segment.fd < 0) return Errno("create", segment.path);
  segments_.push_back(std::move(segment));
  back_active_ = true;
  back_dirty_ = false;
  dir_dirty_ = true;
  return absl::OkStatus();
}

uint64_t Spool::UnackedIn(const Segment& segment) const {
  uint64_t n = 0;
  for (const Entry& e : segment.entries) n += e.sequence > acked_;
  return n;
}

bool Spool::DropFrontLocked(bool count_unacked, bool may_keep) {
  Segment& front = segments_.front();
  const uint64_t lost = count_unacked ? UnackedIn(front) : 0;
  lost_.dropped += lost;
  if (lost > 0) lost_dirty_ = true;
  // The count is durable before the findings it stands for are unlinked.
  if (!LossDurableLocked(may_keep)) {
    lost_.dropped -= lost;  // still stored, so not lost
    return false;
  }
  dropped_total_ += lost;
  counted_corrupt_.erase(front.name);
  close(front.fd);
  unlink(front.path.c_str());
  total_bytes_ -= front.bytes;
  if (segments_.size() == 1) back_active_ = false;
  segments_.pop_front();
  return true;
}

absl::StatusOr<uint64_t> Spool::Append(const tokenwatch::v1::Finding& finding) {
  absl::MutexLock lock(&mu_);
  return AppendLocked(finding);
}

absl::StatusOr<uint64_t> Spool::AppendLocked(const tokenwatch::v1::Finding& finding) {
  tokenwatch::v1::SequencedFinding item;
  item.set_sequence(last_sequence_ + 1);
  *item.mutable_finding() = finding;
  std::string payload;
  if (!item.SerializeToString(&payload) || payload.size() > kMaxSpoolPayloadBytes) {
    return absl::InvalidArgumentError("spool: finding too large to spool");
  }
  const std::string record = EncodeSpoolRecord(payload);

  if (!back_active_ || segments_.back().bytes + record.size() > options_.segment_bytes) {
    if (absl::Status s = StartSegmentLocked(item.sequence()); !s.ok()) return s;
  }
  // Full: the oldest findings go first, so the newest evidence survives a long outage. While
  // their loss cannot be recorded the spool keeps them, up to one segment over its bound.
  while (total_bytes_ + record.size() > options_.max_bytes && segments_.size() > 1) {
    const bool may_keep =
        total_bytes_ + record.size() <= options_.max_bytes + options_.segment_bytes;
    if (!DropFrontLocked(/*count_unacked=*/true, may_keep)) break;
  }
  Segment& back = segments_.back();
  if (!WriteAll(back.fd, record)) {
    absl::Status status = Errno("write", back.path);
    // Whatever part landed is a torn record; a fresh segment keeps the next ones readable.
    back_active_ = false;
    return status;
  }
  back.entries.push_back(Entry{item.sequence(), back.bytes, static_cast<uint32_t>(record.size())});
  back.bytes += record.size();
  total_bytes_ += record.size();
  back_dirty_ = true;
  last_sequence_ = item.sequence();
  return item.sequence();
}

absl::Status Spool::Sync() {
  absl::MutexLock lock(&mu_);
  return SyncLocked();
}

absl::Status Spool::SyncLocked() {
  absl::Status status = SyncSegmentsLocked();
  // Losses gathered since the last write of `lost` (CountDropped, damage found by ReadAfter)
  // ride on the batch fsync rather than costing one each. A failure is counted and logged.
  if (lost_dirty_ && PersistLostLocked().ok()) DropAckedLocked();
  return status;
}

void Spool::CountDropped(uint64_t n) {
  if (n == 0) return;
  absl::MutexLock lock(&mu_);
  lost_.dropped += n;
  lost_dirty_ = true;
}

absl::Status Spool::SyncSegmentsLocked() {
  if (back_active_ && back_dirty_ && !segments_.empty()) {
    if (fdatasync(segments_.back().fd) != 0) return Errno("sync", segments_.back().path);
    back_dirty_ = false;
  }
  if (dir_dirty_) {
    // A new segment's directory entry must be durable too, or its records vanish with it.
    SyncDirectory(options_.dir);
    dir_dirty_ = false;
  }
  return absl::OkStatus();
}

std::vector<tokenwatch::v1::SequencedFinding> Spool::ReadAfter(uint64_t after, size_t max) {
  std::vector<tokenwatch::v1::SequencedFinding> out;
  absl::MutexLock lock(&mu_);
  std::string buf;
  for (Segment& segment : segments_) {
    if (out.size() >= max) break;
    if (segment.entries.empty() || segment.entries.back().sequence <= after) continue;
    auto it = std::upper_bound(segment.entries.begin(), segment.entries.end(), after,
                               [](uint64_t seq, const Entry& e) { return seq < e.sequence; });
    while (it != segment.entries.end() && out.size() < max) {
      buf.resize(it->size);
      SpoolScan::Record record;
      tokenwatch::v1::SequencedFinding item;
      if (!PreadAll(segment.fd, buf.data(), buf.size(), it->offset) ||
          !RecordAt(buf, 0, &record) ||
          !item.ParseFromArray(record.payload.data(), static_cast<int>(record.payload.size())) ||
          item.sequence() != it->sequence) {
        // Damaged after we indexed it (the disk, or someone editing the file): skip it for good.
        // Not written to `lost` here, which on a failing disk would cost an fsync per record
        // while appends wait: until the next Sync writes it, the damage itself is the record
        // (a restart rescans the segment and counts it), and an unlink writes it first.
        ++lost_.corrupt;
        ++corrupt_total_;
        ++counted_corrupt_[segment.name];
        lost_dirty_ = true;
        it = segment.entries.erase(it);
        continue;
      }
      out.push_back(std::move(item));
      ++it;
    }
  }
  return out;
}

uint64_t Spool::Ack(uint64_t sequence) {
  absl::MutexLock lock(&mu_);
  if (sequence <= acked_) return 0;
  uint64_t covered = 0;
  for (const Segment& segment : segments_) {
    if (segment.entries.empty() || segment.entries.front().sequence > sequence) break;
    for (const Entry& e : segment.entries) {
      if (e.sequence > sequence) break;
      covered += e.sequence > acked_;
    }
  }
  acked_ = std::min(sequence, last_sequence_);
  DropAckedLocked();
  PersistAckedLocked();
  return covered;
}

void Spool::DropAckedLocked() {
  while (!segments_.empty() &&
         (segments_.front().entries.empty() ||
          segments_.front().entries.back().sequence <= acked_)) {
    // One whose damage count cannot be written yet stays until a write succeeds (SyncLocked).
    if (!DropFrontLocked(/*count_unacked=*/false, /*may_keep=*/true)) break;
  }
}

void Spool::PersistAckedLocked() {
  // Not synced: a stale watermark after a crash only means re-sends, which are idempotent.
  std::string text = absl::StrCat(acked_, "\n");
  text.resize(21, ' ');
  if (pwrite(acked_fd_, text.data(), text.size(), 0) < 0) return;
}

absl::StatusOr<uint64_t> Spool::AppendLossReport(
    absl::FunctionRef<tokenwatch::v1::Finding(const Lost&)> report) {
  absl::MutexLock lock(&mu_);
  const Lost reported = lost_;
  if (reported.dropped + reported.corrupt == 0) return 0;
  absl::StatusOr<uint64_t> sequence = AppendLocked(report(reported));
  if (!sequence.ok()) return sequence.status();
  if (absl::Status s = SyncSegmentsLocked(); !s.ok()) return s;
  // Appending may itself have dropped a full segment: those losses are not in this report.
  lost_.dropped -= reported.dropped;
  lost_.corrupt -= reported.corrupt;
  lost_dirty_ = true;
  // On a failure `lost` keeps the reported counts: a restart before the next Sync writes it
  // reports them again, the direction the spool allows.
  PersistLostLocked().IgnoreError();
  return sequence;
}

Spool::Stats Spool::stats() const {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.bytes = total_bytes_;
  s.segments = segments_.size();
  for (const Segment& segment : segments_) s.unacked += UnackedIn(segment);
  s.last_sequence = last_sequence_;
  s.acked = acked_;
  s.dropped_total = dropped_total_;
  s.corrupt_total = corrupt_total_;
  s.unreported = lost_;
  s.lost_write_failures = lost_write_failures_;
  s.lost_file_damaged = lost_file_damaged_;
  return s;
}

}  // namespace tokenwatch::exporting
