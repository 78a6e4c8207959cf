#include "agent/main/reopens.h"

#include <algorithm>

namespace tokenwatch::agent {

ReopenLedger::Key ReopenLedger::MakeKey(const tw_reopen_key& key) {
  return Key{key.proc.tgid, key.proc.start_ticks, key.file.dev, key.file.ino, key.access};
}

std::optional<detect::TokenRead> ReopenLedger::Credit(const Entry& entry, uint64_t opens,
                                                      absl::Time now) const {
  if (opens == 0 || !entry.read.has_value()) return std::nullopt;
  detect::TokenRead credit = *entry.read;
  credit.opens = opens;
  // The hooks fold an open only within its window: the credit is the
  // window's, so it folds into the window's finding even when read late.
  credit.time = std::min(now, entry.read->time + options_.window - absl::Microseconds(1));
  credit.time = std::max(credit.time, entry.read->time);
  return credit;
}

std::optional<detect::TokenRead> ReopenLedger::OnRecord(const tw_reopen_key& key,
                                                        uint64_t folded_before,
                                                        std::optional<detect::TokenRead> read,
                                                        absl::Time now, uint64_t* increment) {
  Entry& entry = entries_[MakeKey(key)];
  // What the previous window folded after its last credit belongs to it.
  std::optional<detect::TokenRead> credit;
  *increment = folded_before > entry.total ? folded_before - entry.total : 0;
  credit = Credit(entry, *increment, now);
  // Never back: a total read just before this record was consumed already
  // counted opens of the new window (credited to the old read, not twice).
  entry.total = std::max(entry.total, folded_before);
  entry.read = std::move(read);
  entry.touched = now;
  return credit;
}

std::optional<detect::TokenRead> ReopenLedger::OnTotal(const tw_reopen_key& key, uint64_t total,
                                                       absl::Time now, uint64_t* increment) {
  *increment = 0;
  auto [it, inserted] = entries_.try_emplace(MakeKey(key));
  Entry& entry = it->second;
  if (inserted) {
    // A total before its record (the record is still in the ring) or after
    // the ledger forgot the key: nothing to credit it to; start from here.
    entry.total = total;
    entry.touched = now;
    return std::nullopt;
  }
  if (total == entry.total) return std::nullopt;
  // A smaller total: the kernel's LRU evicted the entry and it began again.
  *increment = total > entry.total ? total - entry.total : total;
  entry.total = total;
  entry.touched = now;
  return Credit(entry, *increment, now);
}

void ReopenLedger::Expire(absl::Time now) {
  absl::erase_if(entries_, [&](const auto& kv) {
    return now - kv.second.touched > options_.idle_expiry;
  });
  if (entries_.size() <= options_.max_entries) return;
  std::vector<std::pair<absl::Time, Key>> by_age;
  by_age.reserve(entries_.size());
  for (const auto& [key, entry] : entries_) by_age.emplace_back(entry.touched, key);
  size_t excess = entries_.size() - options_.max_entries;
  std::nth_element(by_age.begin(), by_age.begin() + excess, by_age.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < excess; ++i) entries_.erase(by_age[i].second);
}

tw_reopen_key ReopenKeyOf(const tw_token_open& event) {
  tw_reopen_key key{};
  key.proc = tw_proc_key{event.tgid, 0, event.reader.key.start_ticks};
  key.file = event.file;
  key.access = event.access;
  return key;
}

}  // namespace tokenwatch::agent
