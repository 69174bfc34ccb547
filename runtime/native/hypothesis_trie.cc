// The tries of a batch's n-best (runtime/trie.py::build_trie says what they are; this computes them, packed):
// per utterance, its sequences [sos] hypothesis [eos] sorted (a prefix first), each adding the nodes past its common
// prefix with the one before it. numpy needs ~40 whole-array passes for it, ~1.5 ms for 64 utterances, holding the
// GIL for much of it; here it is one pass over the nodes.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace {

struct Batch {
  const int32_t* tokens;  // (B, N, T)
  const int64_t* lengths;  // (B, N)
  const int64_t* count;  // (B,)
  int64_t batch, n, width;
  int32_t sos, eos;
  bool reverse;

  // Hypothesis r of utterance b as its node tokens, sorted; per sorted one its common prefix with the one before.
  void Sorted(int64_t b, std::vector<std::vector<int32_t>>* seqs, std::vector<int64_t>* order,
              std::vector<int64_t>* shared) const {
    const int64_t real = std::min(count[b], n);
    seqs->assign(real, {});
    for (int64_t r = 0; r < real; ++r) {
      const int32_t* h = tokens + (b * n + r) * width;
      const int64_t len = lengths[b * n + r];
      std::vector<int32_t>& s = (*seqs)[r];
      s.reserve(len + 2);
      s.push_back(sos);
      for (int64_t t = 0; t < len; ++t) s.push_back(h[reverse ? len - 1 - t : t]);
      s.push_back(eos);
    }
    order->resize(real);
    std::iota(order->begin(), order->end(), 0);
    std::stable_sort(order->begin(), order->end(), [&](int64_t a, int64_t c) { return (*seqs)[a] < (*seqs)[c]; });
    shared->assign(real, 1);  // the first shares the root
    for (int64_t k = 1; k < real; ++k) {
      const auto& a = (*seqs)[(*order)[k - 1]];
      const auto& c = (*seqs)[(*order)[k]];
      (*shared)[k] = std::mismatch(a.begin(), a.end(), c.begin(), c.end()).first - a.begin();
    }
  }
};

}  // namespace

extern "C" {

// Nodes of each utterance's trie.
void hypothesis_trie_sizes(const int32_t* tokens, const int64_t* lengths, const int64_t* count, int64_t batch,
                           int64_t n, int64_t width, int32_t sos, int32_t eos, int32_t reverse, int64_t* nodes) {
  const Batch in{tokens, lengths, count, batch, n, width, sos, eos, reverse != 0};
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> order, shared;
  for (int64_t b = 0; b < batch; ++b) {
    in.Sorted(b, &seqs, &order, &shared);
    nodes[b] = 1;
    for (size_t k = 0; k < order.size(); ++k) nodes[b] += seqs[order[k]].size() - shared[k];
  }
}

// The tries back to back (runtime/trie.py::PackedTries): utterance b's nodes are packed nodes starts[b] onwards, its
// parents and paths in packed numbering, its ends (B, size) in its own; paths of absent steps point at its root, as
// numpy's packing of the padded tries leaves them. Outputs zeroed by the caller; size and steps at least the largest
// trie and the longest hypothesis + 1.
void packed_hypothesis_tries(const int32_t* tokens, const int64_t* lengths, const int64_t* count, int64_t batch,
                             int64_t n, int64_t width, int32_t sos, int32_t eos, int32_t reverse, int64_t size,
                             int64_t steps, int32_t* node_tokens, int32_t* positions, int32_t* parents,
                             int32_t* utterances, int32_t* ends, int32_t* starts, int32_t* paths) {
  const Batch in{tokens, lengths, count, batch, n, width, sos, eos, reverse != 0};
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> order, shared, start;
  std::vector<int32_t> path, previous;
  int32_t first = 0;  // the utterance's root, packed
  for (int64_t b = 0; b < batch; ++b) {
    in.Sorted(b, &seqs, &order, &shared);
    const int64_t real = order.size();
    start.resize(real);
    int64_t total = 1;
    for (int64_t k = 0; k < real; ++k) {
      start[k] = total;
      total += seqs[order[k]].size() - shared[k];
    }
    int32_t* tok = node_tokens + first;
    int32_t* pos = positions + first;
    int32_t* par = parents + first;
    int32_t* end = ends + b * size;
    starts[b] = first;
    std::fill(utterances + first, utterances + first + total, static_cast<int32_t>(b));
    std::fill(paths + b * n * steps, paths + (b + 1) * n * steps, first);
    tok[0] = sos;
    par[0] = first;
    end[0] = static_cast<int32_t>(total);
    previous.assign(1, 0);  // the root's path
    for (int64_t k = 0; k < real; ++k) {
      const std::vector<int32_t>& s = seqs[order[k]];
      const int64_t depth = s.size();
      path.assign(previous.begin(), previous.begin() + shared[k]);
      for (int64_t d = shared[k]; d < depth; ++d) {
        const int64_t node = start[k] + d - shared[k];
        path.push_back(static_cast<int32_t>(node));
        tok[node] = s[d];
        pos[node] = static_cast<int32_t>(d);
        par[node] = first + path[d - 1];
        // the subtree ends where the first later hypothesis shares fewer than d + 1 depths
        int64_t after = k + 1;
        while (after < real && shared[after] > d) ++after;
        end[node] = static_cast<int32_t>(after < real ? start[after] : total);
      }
      int32_t* out = paths + (b * n + order[k]) * steps;
      for (size_t d = 1; d < path.size(); ++d) out[d - 1] = first + path[d];  // depths 1 .. length + 1
      previous.swap(path);
    }
    first += static_cast<int32_t>(total);
  }
}
}
