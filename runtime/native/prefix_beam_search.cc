// CTC prefix beam search with WeNet's semantics, for a batch, in the same double arithmetic as the Python version
// (runtime/search.py::prefix_beam_search): log_add via libm exp/log, candidates in top-k order, prefixes in beam
// order, a stable sort by total score with first-insertion order breaking ties. Utterances are independent, so
// they are spread over threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace {

const double kNegInf = -std::numeric_limits<double>::infinity();

double LogAdd(double a, double b) {
  // With one side -inf the formula gives the other side exactly (exp(0) = 1, exp(-inf) = 0, log(1) = 0).
  if (b == kNegInf) return a;
  if (a == kNegInf) return b;
  // exp(max - max) is exactly 1, so one exp is enough for the same bits
  return a >= b ? a + std::log(1.0 + std::exp(b - a)) : b + std::log(std::exp(a - b) + 1.0);
}

// Prefixes are nodes of a trie, so that extending one and looking it up cost O(1), not O(length); node ids are
// dense, so per-frame lookups index an array instead of hashing. Children are found in an open-addressing table.
class Trie {
 public:
  Trie() : parent_{-1}, label_{-1}, keys_(1024, kEmpty), values_(1024) {}
  int32_t Child(int32_t node, int32_t label) {
    const uint64_t key = (static_cast<uint64_t>(node) << 32) | static_cast<uint32_t>(label);
    size_t mask = keys_.size() - 1;
    size_t i = Hash(key) & mask;
    for (; keys_[i] != kEmpty; i = (i + 1) & mask) {
      if (keys_[i] == key) return values_[i];
    }
    const int32_t child = static_cast<int32_t>(parent_.size());
    parent_.push_back(node);
    label_.push_back(label);
    keys_[i] = key;
    values_[i] = child;
    if (2 * parent_.size() > keys_.size()) Grow();
    return child;
  }
  int32_t Last(int32_t node) const { return label_[node]; }
  std::vector<int32_t> Labels(int32_t node) const {
    std::vector<int32_t> labels;
    for (; node > 0; node = parent_[node]) labels.push_back(label_[node]);
    std::reverse(labels.begin(), labels.end());
    return labels;
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static size_t Hash(uint64_t key) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20); }
  void Grow() {
    std::vector<uint64_t> keys(2 * keys_.size(), kEmpty);
    std::vector<int32_t> values(keys.size());
    const size_t mask = keys.size() - 1;
    for (size_t j = 0; j < keys_.size(); ++j) {
      if (keys_[j] == kEmpty) continue;
      size_t i = Hash(keys_[j]) & mask;
      while (keys[i] != kEmpty) i = (i + 1) & mask;
      keys[i] = keys_[j];
      values[i] = values_[j];
    }
    keys_.swap(keys);
    values_.swap(values);
  }
  std::vector<int32_t> parent_, label_;
  std::vector<uint64_t> keys_;
  std::vector<int32_t> values_;
};

struct Prefix {
  int32_t node;  // in the trie; 0 is the empty prefix
  double s;      // log-score of paths ending in blank
  double ns;     // log-score of paths ending in the last label
  double total;  // LogAdd(s, ns), once the frame is complete
  int32_t order;  // first-insertion rank within the frame
};

// The prefixes of the next frame, in first-insertion order; `slot` maps a trie node to its entry (or -1).
class NextBeam {
 public:
  Prefix& Get(int32_t node) {
    if (static_cast<size_t>(node) >= slot_.size()) slot_.resize(2 * node + 64, -1);
    int32_t& slot = slot_[node];
    if (slot < 0) {
      slot = static_cast<int32_t>(entries_.size());
      entries_.push_back({node, kNegInf, kNegInf, 0.0, 0});
    }
    return entries_[slot];
  }
  // Ranks by total score (stable) and keeps the best `beam`; the slots are reset for the next frame.
  void Prune(int64_t beam, std::vector<Prefix>* out) {
    for (Prefix& p : entries_) {
      p.total = LogAdd(p.s, p.ns);
      p.order = slot_[p.node];
      slot_[p.node] = -1;
    }
    // the best `beam` in a stable sort's order: by total, then by first insertion
    const auto better = [](const Prefix& x, const Prefix& y) {
      return x.total > y.total || (x.total == y.total && x.order < y.order);
    };
    const size_t keep = std::min(entries_.size(), static_cast<size_t>(beam));
    std::partial_sort(entries_.begin(), entries_.begin() + keep, entries_.end(), better);
    out->assign(entries_.begin(), entries_.begin() + keep);
    entries_.clear();  // keeps its capacity for the next frame
  }

 private:
  std::vector<Prefix> entries_;
  std::vector<int32_t> slot_;
};

void Search(const float* top_logp, const int32_t* top_labels, int64_t length, int64_t k, int64_t beam, int64_t blank,
            int32_t* out_tokens, int64_t frames, int64_t* out_lengths, double* out_scores, int64_t* out_count) {
  Trie trie;
  NextBeam next;
  std::vector<Prefix> current = {{0, 0.0, kNegInf, 0.0, 0}};
  for (int64_t t = 0; t < length; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t label = top_labels[t * k + j];
      const double p = static_cast<double>(top_logp[t * k + j]);
      for (const Prefix& prefix : current) {
        if (label == blank) {
          Prefix& same = next.Get(prefix.node);
          same.s = LogAdd(same.s, prefix.total + p);
        } else if (prefix.node != 0 && trie.Last(prefix.node) == label) {
          Prefix& same = next.Get(prefix.node);
          same.ns = LogAdd(same.ns, prefix.ns + p);
          const int32_t child = trie.Child(prefix.node, label);
          Prefix& extended = next.Get(child);
          extended.ns = LogAdd(extended.ns, prefix.s + p);
        } else {
          const int32_t child = trie.Child(prefix.node, label);
          Prefix& extended = next.Get(child);
          extended.ns = LogAdd(extended.ns, prefix.total + p);
        }
      }
    }
    next.Prune(beam, &current);
  }
  *out_count = static_cast<int64_t>(current.size());
  for (size_t r = 0; r < current.size(); ++r) {
    const std::vector<int32_t> labels = trie.Labels(current[r].node);
    std::copy(labels.begin(), labels.end(), out_tokens + r * frames);
    out_lengths[r] = static_cast<int64_t>(labels.size());
    out_scores[r] = current[r].total;
  }
}

}  // namespace

extern "C" {

// top_logp, top_labels: (batch, frames, k) row-major; lengths: (batch,). Outputs per utterance and rank r < beam:
// out_tokens (batch, beam, frames), out_lengths (batch, beam), out_scores (batch, beam); out_count (batch,).
// `threads` > 1 searches that many utterances at once.
void ctc_prefix_beam_search(const float* top_logp, const int32_t* top_labels, const int64_t* lengths, int64_t batch,
                            int64_t frames, int64_t k, int64_t beam, int64_t blank, int64_t threads,
                            int32_t* out_tokens, int64_t* out_lengths, double* out_scores, int64_t* out_count) {
  auto work = [&](int64_t first) {
    for (int64_t b = first; b < batch; b += threads) {
      Search(top_logp + b * frames * k, top_labels + b * frames * k, lengths[b], k, beam, blank,
             out_tokens + b * beam * frames, frames, out_lengths + b * beam, out_scores + b * beam, out_count + b);
    }
  };
  threads = std::max<int64_t>(1, std::min(threads, batch));
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < threads; ++i) pool.emplace_back(work, i);
  work(0);
  for (std::thread& th : pool) th.join();
}

}  // extern "C"
