// CTC prefix beam search with WeNet's semantics, for a batch, in the same double arithmetic as the Python version
// (runtime/search.py::prefix_beam_search): log_add via libm exp/log, candidates in top-k order, prefixes in beam
// order, a stable sort by total score with first-insertion order breaking ties.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <vector>

namespace {

const double kNegInf = -std::numeric_limits<double>::infinity();

double LogAdd(double a, double b) {
  if (a == kNegInf && b == kNegInf) return kNegInf;
  const double m = std::max(a, b);
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

// Prefixes are nodes of a trie, so that extending one and looking it up cost O(1), not O(length).
class Trie {
 public:
  Trie() : parent_{-1}, label_{-1} {}
  int32_t Child(int32_t node, int32_t label) {
    const uint64_t key = (static_cast<uint64_t>(node) << 32) | static_cast<uint32_t>(label);
    auto it = children_.find(key);
    if (it != children_.end()) return it->second;
    const int32_t child = static_cast<int32_t>(parent_.size());
    parent_.push_back(node);
    label_.push_back(label);
    children_.emplace(key, child);
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
  std::vector<int32_t> parent_, label_;
  std::unordered_map<uint64_t, int32_t> children_;
};

struct Prefix {
  int32_t node;  // in the trie; 0 is the empty prefix
  double s;      // log-score of paths ending in blank
  double ns;     // log-score of paths ending in the last label
};

class NextBeam {
 public:
  explicit NextBeam(size_t n) {
    entries_.reserve(n);
    index_.reserve(n);
  }
  Prefix& Get(int32_t node) {
    auto it = index_.find(node);
    if (it != index_.end()) return entries_[it->second];
    index_.emplace(node, entries_.size());
    entries_.push_back({node, kNegInf, kNegInf});
    return entries_.back();
  }
  std::vector<Prefix>& entries() { return entries_; }

 private:
  std::vector<Prefix> entries_;
  std::unordered_map<int32_t, size_t> index_;
};

}  // namespace

extern "C" {

// top_logp, top_ids: (batch, frames, k) row-major; lengths: (batch,). Outputs per utterance and rank r < beam:
// out_tokens (batch, beam, frames), out_lengths (batch, beam), out_scores (batch, beam); out_count (batch,).
void ctc_prefix_beam_search(const float* top_logp, const int64_t* top_ids, const int64_t* lengths, int64_t batch,
                            int64_t frames, int64_t k, int64_t beam, int64_t blank, int32_t* out_tokens,
                            int64_t* out_lengths, double* out_scores, int64_t* out_count) {
  for (int64_t b = 0; b < batch; ++b) {
    Trie trie;
    std::vector<Prefix> current = {{0, 0.0, kNegInf}};
    for (int64_t t = 0; t < lengths[b]; ++t) {
      NextBeam next(2 * k * current.size());
      const int64_t base = (b * frames + t) * k;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t label = static_cast<int32_t>(top_ids[base + j]);
        const double p = static_cast<double>(top_logp[base + j]);
        for (const Prefix& prefix : current) {
          const double total = LogAdd(prefix.s, prefix.ns);
          if (label == blank) {
            Prefix& same = next.Get(prefix.node);
            same.s = LogAdd(same.s, total + p);
          } else if (prefix.node != 0 && trie.Last(prefix.node) == label) {
            Prefix& same = next.Get(prefix.node);
            same.ns = LogAdd(same.ns, prefix.ns + p);
            Prefix& extended = next.Get(trie.Child(prefix.node, label));
            extended.ns = LogAdd(extended.ns, prefix.s + p);
          } else {
            Prefix& extended = next.Get(trie.Child(prefix.node, label));
            extended.ns = LogAdd(extended.ns, total + p);
          }
        }
      }
      std::vector<Prefix>& entries = next.entries();
      std::stable_sort(entries.begin(), entries.end(), [](const Prefix& x, const Prefix& y) {
        return LogAdd(x.s, x.ns) > LogAdd(y.s, y.ns);
      });
      if (static_cast<int64_t>(entries.size()) > beam) entries.resize(beam);
      current = std::move(entries);
    }
    out_count[b] = static_cast<int64_t>(current.size());
    for (size_t r = 0; r < current.size(); ++r) {
      const std::vector<int32_t> labels = trie.Labels(current[r].node);
      std::copy(labels.begin(), labels.end(), out_tokens + (b * beam + r) * frames);
      out_lengths[b * beam + r] = static_cast<int64_t>(labels.size());
      out_scores[b * beam + r] = LogAdd(current[r].s, current[r].ns);
    }
  }
}

}  // extern "C"
