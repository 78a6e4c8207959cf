#include "collector/ingest.h"

#include <utility>

namespace tokenwatch::collector {

uint64_t FindingHub::Subscribe(FindingQuery filter, Sink sink) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  watchers_.emplace(id, Watcher{std::move(filter), std::move(sink)});
  return id;
}

void FindingHub::Unsubscribe(uint64_t id) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(id);
}

void FindingHub::Publish(const std::vector<const tokenwatch::v1::Finding*>& findings) {
  absl::MutexLock lock(&mu_);
  for (auto& [id, watcher] : watchers_) {
    for (const tokenwatch::v1::Finding* f : findings) {
      if (MatchesQuery(watcher.filter, *f)) watcher.sink(*f);
    }
  }
}

void FindingHub::Publish(const std::vector<const StoredFinding*>& findings) {
  {
    absl::MutexLock lock(&mu_);
    if (watchers_.empty()) return;
  }
  std::vector<tokenwatch::v1::Finding> parsed(findings.size());
  std::vector<const tokenwatch::v1::Finding*> ptrs;
  ptrs.reserve(findings.size());
  for (size_t i = 0; i < findings.size(); ++i) {
    // Stored payloads were validated as findings on the way in; one that does not parse is
    // not ours to show.
    if (parsed[i].ParseFromString(findings[i]->payload)) ptrs.push_back(&parsed[i]);
  }
  Publish(ptrs);
}

Ingest::Ingest(FindingStore* store, FindingHub* hub, size_t max_batch)
    : store_(store), hub_(hub), max_batch_(max_batch) {
  thread_ = std::thread([this] { Run(); });
}

Ingest::~Ingest() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void Ingest::Submit(StoredFinding finding, Done done) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(Item{std::move(finding), std::move(done)});
}

void Ingest::Run() {
  std::vector<Item> batch;
  std::vector<const StoredFinding*> findings;
  std::vector<bool> changed;
  std::vector<const StoredFinding*> published;
  for (;;) {
    batch.clear();
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, and everything submitted is committed
      while (!queue_.empty() && batch.size() < max_batch_) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    findings.clear();
    for (const Item& item : batch) findings.push_back(&item.finding);
    const absl::Status status = store_->Upsert(findings, &changed);
    for (Item& item : batch) item.done(status);
    if (status.ok() && hub_ != nullptr) {
      published.clear();
      for (size_t i = 0; i < findings.size(); ++i) {
        if (changed[i]) published.push_back(findings[i]);
      }
      if (!published.empty()) hub_->Publish(published);
    }
  }
}

}  // namespace tokenwatch::collector
