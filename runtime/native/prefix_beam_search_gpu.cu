// CTC prefix beam search on a CUDA GPU, one thread block per utterance, with the semantics of the native search
// (prefix_beam_search.cc): the same n-best, tie order and, up to the last bit of exp/log, scores.
//
// The search is a chain of frames, so its time is one frame's latency times the frame count. The Triton kernel
// (plugins/ctc_prefix_beam_search.py) spends ~6 us a frame on reductions, layout conversions and barriers; here a
// frame is two phases between two barriers, with the beam and the keys in shared memory: 1.3 us a frame on an H200
// (512 threads, beam 10; 2.9 before the keys beaten for sure were left out, 1.9 while the loops' tests short-circuited
// and a shared atomic counted the live keys). Each thread's part is a chain of shared-memory loads and the frame's
// latency is the longest chain: 1,024 threads took 1.4-1.5 us, two warps per utterance 3.2-3.4, eight threads per
// extension's merge test 1.9-2.0, one shared atomic per warp instead of per key (as written by hand) 1.9.
//
// One frame. Every key of the next beam is either slot m's own prefix (touched by a blank, a repeat of its last
// label, or an extension from the slot holding its parent) or prefix i extended by candidate j, a new prefix unless
// it is slot m's own already (merged there). Phase 1: one thread per key computes its score and first touch
// (candidate, then prefix, then the repeat branch's second touch: the native search's insertion order), and packs
// the live keys into the ranked list, leaving out the extensions that beam keys beat for sure (slots are in rank
// order and candidates best first, so ~45 of 110 keys remain at beam 10; a frame whose candidates come in another
// order is searched whole). Phase 2: each ranked key's rank, the ranked keys better than it (higher score, or equal
// and touched earlier), counted by kParts threads; a rank below the beam is the slot it takes. Prefixes are matched by content (depth and a 64-bit hash of their labels) and
// stored as trie nodes (parent, label) in global memory, read back at the end.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace {

constexpr int kThreads = 512;  // a multiple of 32, beyond kMaxBeam + 32
constexpr int kParts = 8;  // threads ranking one key, each against every kParts-th key
constexpr int kMaxBeam = 32;  // also the most candidates per frame
constexpr int kMaxKeys = kMaxBeam + kMaxBeam * kMaxBeam;

__device__ __forceinline__ double LogAdd(double a, double b) {
  // as the native LogAdd, bit for bit up to exp/log
  if (b == -INFINITY) return a;
  if (a == -INFINITY) return b;
  return a >= b ? a + log(1.0 + exp(b - a)) : b + log(exp(a - b) + 1.0);
}

__device__ __forceinline__ uint64_t ExtendHash(uint64_t h, int32_t label) {
  uint64_t x = (h ^ (static_cast<uint64_t>(label) + 1)) * 0x1E3779B97F4A7C15ull;
  x ^= x >> 29;
  x *= 0x3F58476D1CE4E5B9ull;
  return x ^ (x >> 32);
}

// A frame's candidates into shared memory, by the first warp (lane j: candidate j, where `loads`), and what the
// pruning of phase 1 needs: the blank's index (k: none), or -1 where they are not best first (then nothing is pruned).
__device__ __forceinline__ void StoreCandidates(int lane, bool loads, float p, int32_t label, int k, int32_t blank,
                                                double* cand_p, int32_t* cand_label, int32_t* blank_at) {
  if (loads) cand_p[lane] = p, cand_label[lane] = label;
  const unsigned blanks = __ballot_sync(0xffffffffu, loads && label == blank);
  const float next = __shfl_down_sync(0xffffffffu, p, 1);
  const unsigned unordered = __ballot_sync(0xffffffffu, loads && lane + 1 < k && next > p);
  if (lane == 0) *blank_at = unordered ? -1 : blanks ? __ffs(blanks) - 1 : k;
}

struct Beam {  // a slot per prefix
  int32_t node[kMaxBeam], last[kMaxBeam], depth[kMaxBeam];
  uint64_t ident[kMaxBeam], parent_ident[kMaxBeam];
  double s[kMaxBeam], ns[kMaxBeam], total[kMaxBeam];
};

__global__ void __launch_bounds__(kThreads) PrefixBeamSearch(
    const float* __restrict__ top_logp, const int32_t* __restrict__ top_labels, const int32_t* __restrict__ lengths,
    int32_t frames, int32_t k, int32_t beam, int32_t blank, int32_t* __restrict__ trie, int32_t* __restrict__ tokens,
    int64_t* __restrict__ token_lengths, double* __restrict__ scores, int64_t* __restrict__ count) {
  __shared__ Beam beams[2];
  __shared__ double cand_p[2][kMaxBeam];
  __shared__ int32_t cand_label[2][kMaxBeam];
  // the frame's ranked keys, packed in any order: (score, first touch, key index)
  __shared__ double key_score[kMaxKeys], own_s[kMaxBeam], own_ns[kMaxBeam];
  __shared__ int32_t key_order[kMaxKeys], key_index[kMaxKeys];
  // alive_count[c]: the keys ranked by the frame before a frame of parity c (ranked[] is reset while a frame starts,
  // so that count keeps a slot of its own); its beam holds the best min(count, beam) of them. Storing the min
  // instead, read without one, made the kernel 6-12 % slower (H200, session 29): the code nvcc makes differs
  __shared__ int32_t alive_count[2], ranked[2], blank_at[2];

  const int b = blockIdx.x, tid = threadIdx.x;
  const int length = lengths[b];
  const int64_t nodes = 1 + static_cast<int64_t>(frames) * beam;
  int32_t* parent_of = trie + b * 2 * nodes;
  int32_t* label_of = parent_of + nodes;
  const float* logp = top_logp + static_cast<int64_t>(b) * frames * k;
  const int32_t* labels = top_labels + static_cast<int64_t>(b) * frames * k;
  if (tid == 0) {  // the empty prefix
    Beam& first = beams[0];
    first.node[0] = 0, first.last[0] = -1, first.depth[0] = 0, first.ident[0] = 0, first.parent_ident[0] = 0;
    first.s[0] = 0.0, first.ns[0] = -INFINITY, first.total[0] = 0.0;
    alive_count[0] = 1, ranked[0] = 0;
  }
  if (tid < 32) {  // the first frame's candidates
    const bool loads = tid < k && length > 0;
    StoreCandidates(tid, loads, loads ? logp[tid] : 0.0f, loads ? labels[tid] : 0, k, blank, cand_p[0], cand_label[0],
                    &blank_at[0]);
  }
  __syncthreads();
  for (int t = 0; t < length; ++t) {
    const int c = t & 1;
    const Beam& in = beams[c];
    Beam& out = beams[c ^ 1];
    const double* p = cand_p[c];
    const int32_t* label = cand_label[c];
    const int live = min(alive_count[c], beam);
    // the next frame's candidates, loaded now and stored at the end of the frame (hides the global load's latency)
    float p_next = 0.0f;
    int32_t label_next = 0;
    if (tid < k && t + 1 < length) p_next = logp[(t + 1) * k + tid], label_next = labels[(t + 1) * k + tid];
    // phase 1: each key's score and first touch. The own keys (the longer work: two log-adds) run on the last warp,
    // the extensions on the others, so that no warp runs both paths one after the other
    if (tid >= kThreads - 32) {  // slot m's own prefix
      const int m = tid - (kThreads - 32);
      if (m < beam) {
        double s = -INFINITY, ns = -INFINITY, score = -INFINITY;
        int order = INT32_MAX;
        if (m < live) {
          int j_blank = -1, j_rep = -1, i_src = -1;
          const int32_t last = in.last[m];
#pragma unroll 4
          for (int j = k - 1; j >= 0; --j) {  // the first match wins (top-k labels are distinct anyway)
            const int32_t l = label[j];
            j_blank = l == blank ? j : j_blank;
            j_rep = l == last ? j : j_rep;
          }
          if (j_rep >= 0) {
            const int32_t depth = in.depth[m] - 1;
            const uint64_t parent = in.parent_ident[m];
#pragma unroll 4
            for (int i = live - 1; i >= 0; --i) i_src = (in.depth[i] == depth) & (in.ident[i] == parent) ? i : i_src;
          }
          if (j_blank >= 0) s = in.total[m] + p[j_blank], order = (j_blank * beam + m) * 2;
          if (j_rep >= 0) ns = in.ns[m] + p[j_rep], order = min(order, (j_rep * beam + m) * 2);
          if (i_src >= 0) {  // the parent's extension: only its blank-ending paths when it ends in the same label
            const bool repeats = in.last[i_src] == last;
            ns = LogAdd(ns, (repeats ? in.s[i_src] : in.total[i_src]) + p[j_rep]);
            order = min(order, (j_rep * beam + i_src) * 2 + repeats);
          }
          if (j_blank >= 0 || j_rep >= 0) score = LogAdd(s, ns);
        }
        own_s[m] = s, own_ns[m] = ns;
        if (order != INT32_MAX) {
          const int at = atomicAdd(&ranked[c], 1);
          key_score[at] = score, key_order[at] = order, key_index[at] = m;
        }
      }
    } else {  // slot i's prefix extended by candidate j: a new prefix, unless it is slot m's own already
      const int j_blank = blank_at[c];
      for (int e = tid; e < k * beam; e += kThreads - 32) {
        const int j = e / beam, i = e % beam;
        const int32_t l = label[j];
        // Left out, exactly: a key that beam keys beat for sure. Slots are in rank order and candidates best first,
        // so every extension (i', j') with i' <= i, j' <= j that is neither a blank nor a repeat beats this one: as
        // a key of its own or through the own key it merges into (never a lower score, an earlier touch). A key beaten
        // by such a left-out key is beaten by beam kept keys too, so the kept keys' ranks among themselves are exact.
        // (i+1)(j+1) - 1 cells, less the blank column's and one repeat per slot
        const bool beaten = j_blank >= 0 && (i + 1) * (j - (j_blank < j)) - 1 >= beam;
        if (i < live && l != blank && !beaten) {
          bool merged = false;
          const int32_t depth = in.depth[i] + 1;
          const uint64_t ident = in.ident[i];
          // `&`, not `&&` (here and in the other loops over shared memory): a short-circuit makes each load wait for
          // the previous compare, one shared-memory latency per term; this way a test's loads are issued at once
#pragma unroll 4
          for (int m = 0; m < live; ++m) {
            merged |= (in.last[m] == l) & (in.depth[m] == depth) & (in.parent_ident[m] == ident);
          }
          if (!merged) {
            const bool repeats = l == in.last[i];
            const int at = atomicAdd(&ranked[c], 1);
            key_score[at] = (repeats ? in.s[i] : in.total[i]) + p[j], key_order[at] = e * 2 + repeats;
            key_index[at] = beam + e;
          }
        }
      }
    }
    if (tid == 0) ranked[c ^ 1] = 0;
    __syncthreads();
    // phase 2: ranks (ranked keys better than this one), each key's counted by kParts threads of one warp; the kept
    // keys fill the next beam
    const int part = tid % kParts, keys = ranked[c];
    if (tid == 0) alive_count[c ^ 1] = keys;  // every ranked key is alive; the beam keeps the best of them
    const unsigned group = ((1u << kParts) - 1) << (tid % 32 / kParts * kParts);
    for (int x = tid / kParts; x < keys; x += kThreads / kParts) {
      const int order = key_order[x], e = key_index[x];
      const double score = key_score[x];
      int rank = 0;
#pragma unroll 4
      for (int f = part; f < keys; f += kParts) {
        const double other = key_score[f];
        rank += (other > score) | ((other == score) & (key_order[f] < order));
      }
#pragma unroll
      for (int lane = 1; lane < kParts; lane *= 2) rank += __shfl_xor_sync(group, rank, lane);
      if (part != 0) continue;
      if (rank >= beam) continue;
      if (e < beam) {
        out.node[rank] = in.node[e], out.last[rank] = in.last[e], out.depth[rank] = in.depth[e];
        out.ident[rank] = in.ident[e], out.parent_ident[rank] = in.parent_ident[e];
        out.s[rank] = own_s[e], out.ns[rank] = own_ns[e], out.total[rank] = score;
      } else {
        const int j = (e - beam) / beam, i = (e - beam) % beam;
        const int32_t child = 1 + t * beam + rank;
        parent_of[child] = in.node[i], label_of[child] = label[j];
        out.node[rank] = child, out.last[rank] = label[j], out.depth[rank] = in.depth[i] + 1;
        out.ident[rank] = ExtendHash(in.ident[i], label[j]), out.parent_ident[rank] = in.ident[i];
        out.s[rank] = -INFINITY, out.ns[rank] = score, out.total[rank] = score;
      }
    }
    if (tid < 32) {
      StoreCandidates(tid, tid < k && t + 1 < length, p_next, label_next, k, blank, cand_p[c ^ 1], cand_label[c ^ 1],
                      &blank_at[c ^ 1]);
    }
    __syncthreads();
  }
  const int live = min(alive_count[length & 1], beam);
  const Beam& final_beam = beams[length & 1];
  if (tid == 0) count[b] = live;
  if (tid < live) {  // each prefix's labels, read back from its trie node to the root
    const int64_t out = static_cast<int64_t>(b) * beam + tid;
    int depth = final_beam.depth[tid];
    scores[out] = final_beam.total[tid];
    token_lengths[out] = depth;
    for (int32_t node = final_beam.node[tid]; depth > 0; node = parent_of[node]) {
      tokens[out * frames + --depth] = label_of[node];
    }
  }
}

}  // namespace

extern "C" {

int prefix_beam_search_max_beam() { return kMaxBeam; }

// top_logp, top_labels: (batch, frames, k) row-major, k <= max beam (best first is fastest; frames in another order
// are searched without pruning); lengths: (batch,) int32; trie: (batch, 2, 1 + frames * beam) int32 scratch. Outputs
// per utterance and rank r < beam: tokens (batch, beam, frames) zeroed before, token_lengths (batch, beam), scores
// (batch, beam); count (batch,). Queued on `stream`; returns the launch's cudaError_t. `device`: the GPU of the stream.
int prefix_beam_search_gpu(const float* top_logp, const int32_t* top_labels, const int32_t* lengths, int32_t batch,
                           int32_t frames, int32_t k, int32_t beam, int32_t blank, int32_t* trie, int32_t* tokens,
                           int64_t* token_lengths, double* scores, int64_t* count, int32_t device, void* stream) {
  if (beam < 1 || beam > kMaxBeam || k < 1 || k > kMaxBeam) return static_cast<int>(cudaErrorInvalidValue);
  if (batch == 0) return 0;
  // this library's CUDA runtime is its own, whose current device is not the caller's
  const cudaError_t error = cudaSetDevice(device);
  if (error != cudaSuccess) return static_cast<int>(error);
  PrefixBeamSearch<<<batch, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      top_logp, top_labels, lengths, frames, k, beam, blank, trie, tokens, token_lengths, scores, count);
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"
