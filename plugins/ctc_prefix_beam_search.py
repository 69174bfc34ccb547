"""CTC prefix beam search on the GPU, one program per utterance, with WeNet's semantics: the same n-best, the same
tie order and, up to the last bit of a libm ``exp``/``log``, the same scores as ``runtime.search.prefix_beam_search``
and the native search.

Why: on the host the search takes ~11 us per frame and utterance (10 candidates x 10 prefixes), which made it the
slowest stage of the pipeline (H200 machine, u2++ with random weights: 0.39 s on 16 CPU threads for the benchmark's
1,000 files, beside 0.36 s of GPU work; 2.5 ms for one 10 s file). Here a batch's search is one kernel queued behind the
encoder, and only its n-best leaves the device.

Two kernels, one semantics. Where nvcc is found, a CUDA kernel (``runtime/native/prefix_beam_search_gpu.cu``, built on
first use): a thread block per utterance, the beam in shared memory, two barriers a frame, 1.3 us a frame on an H200.
Else the Triton kernel below, which needs only Triton but chains ~6 us of reductions a frame (8 warps). One utterance
of 250 frames: 0.32 against 1.55 ms.

One frame, as the host search does it: every (candidate j, prefix i) pair touches one key of the next beam. Since the
prefixes of a beam are distinct, a key gets at most one blank contribution and two non-blank ones (a repeat of its
last label, an extension from its parent), so the order of the log-adds does not matter (log_add is commutative).
Keys that extend prefix i by a label already ending a beam prefix m whose parent is i merge into m's slot; every other
extension is a new prefix. The best ``BEAM`` keys are picked by total score, ties by first insertion (the position of
the key's first touch in the host loop: candidate, then prefix, then the repeat branch's two touches). Prefixes are
nodes of a per-utterance trie in global memory (parent, label), read back once at the end; they are matched by content
(length and a 64-bit hash of their labels), not by node, because a prefix that left the beam and comes back is a new
node (a hash collision between two live prefixes of one length would merge them; at 2^-64 a pair, not guarded).
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import torch

from plugins import tl, triton
from runtime.native import NativeBuildError, load_cuda, pointer

if triton is not None:

    @triton.jit
    def _log_add(a, b):
        # as the native LogAdd: with one side -inf the other exactly, else max + log(1 + exp(min - max))
        hi = tl.maximum(a, b)
        out = hi + tl.log(1.0 + tl.exp(tl.minimum(a, b) - hi))
        return tl.where(b == float("-inf"), a, tl.where(a == float("-inf"), b, out))

    @triton.jit
    def _extend_hash(h, label):
        """The identity of a prefix extended by ``label``, from its own (a 64-bit mix: prefixes are told apart by
        content, since a prefix that left the beam comes back as a new trie node)."""
        x = (h ^ (label.to(tl.uint64) + 1)) * 0x1E3779B97F4A7C15
        x = x ^ (x >> 29)
        x = x * 0x3F58476D1CE4E5B9
        return x ^ (x >> 32)

    @triton.jit
    def _better(score_a, order_a, score_b, order_b):
        """The better of two keys: the higher score, on a tie the earlier first touch."""
        a_first = (score_a > score_b) | ((score_a == score_b) & (order_a < order_b))
        return tl.where(a_first, score_a, score_b), tl.where(a_first, order_a, order_b)

    # T, the batch's frame count, is a plain argument: Triton would otherwise compile a variant per divisibility of
    # it (~1 s each), in the middle of a run when a batch of a new length comes
    @triton.jit(do_not_specialize=["T"])
    def _prefix_beam_search_kernel(LOGP, IDS, LENGTHS, TOKENS, TOKEN_LENGTHS, SCORES, COUNT, TRIE, SLOTS_I, SLOTS_H,
                                   SLOTS_F, T, BLANK: tl.constexpr, K: tl.constexpr, BEAM: tl.constexpr,
                                   R: tl.constexpr, BP: tl.constexpr):
        # The keys of a frame as one (R, BP) grid: row j < K, column i is the extension of slot i's prefix by
        # candidate j; row K, column m is slot m's own prefix. Loops are `while` loops, whose bounds Triton's
        # interpreter reads as numpy 2.4 allows (a `range` over a loaded value it does not).
        b = tl.program_id(0)
        length = tl.load(LENGTHS + b)
        js = tl.arange(0, R)
        ms = tl.arange(0, BP)
        rows = js[:, None] + 0 * ms[None, :]
        own = rows == K
        neg = float("-inf")
        big = R * BP * 2  # beyond every touch order
        nodes = 1 + T * BEAM
        trie_parent = TRIE + b.to(tl.int64) * 2 * nodes
        trie_label = trie_parent + nodes
        slots_i = SLOTS_I + b * 3 * BP
        slots_h = SLOTS_H + b * 2 * BP
        slots_f = SLOTS_F + b * 3 * BP
        # the beam, a slot per prefix: its trie node (0: empty), identity and its parent's, last label, length, scores
        count = tl.sum((ms < 1).to(tl.int32), 0)  # live slots (a tensor: the frame loop changes it)
        valid = ms < count
        node = tl.zeros([BP], tl.int32)
        ident = tl.zeros([BP], tl.uint64)
        parent_ident = tl.zeros([BP], tl.uint64)
        last = tl.full([BP], -1, tl.int32)
        depth = tl.zeros([BP], tl.int32)
        s = tl.where(valid, 0.0, neg).to(tl.float64)
        ns = tl.full([BP], neg, tl.float64)
        total = s
        jvalid = js < K
        p = tl.load(LOGP + b * T * K + js, mask=jvalid & (length > 0), other=neg).to(tl.float64)
        lab = tl.load(IDS + b * T * K + js, mask=jvalid & (length > 0), other=-1).to(tl.int32)
        t = 0
        while t < length:
            # the next frame's candidates, loaded while this one is searched
            ahead = jvalid & (t + 1 < length)
            p_next = tl.load(LOGP + (b * T + t + 1) * K + js, mask=ahead, other=neg)
            lab_next = tl.load(IDS + (b * T + t + 1) * K + js, mask=ahead, other=-1)
            is_blank = jvalid & (lab == BLANK)
            has_blank = tl.max(is_blank.to(tl.int32), 0) > 0
            p_blank = tl.max(tl.where(is_blank, p, neg), 0)
            j_blank = tl.min(tl.where(is_blank, js, R), 0)
            # slot m's own prefix: blank, repeat of its last label, extension from the slot of its parent
            rep_hit = valid[:, None] & jvalid[None, :] & (lab[None, :] == last[:, None])  # (m, j)
            has_rep = tl.max(rep_hit.to(tl.int32), 1) > 0
            j_rep = tl.min(tl.where(rep_hit, js[None, :], R), 1)
            p_rep = tl.max(tl.where(rep_hit, p[None, :], neg), 1)
            src_hit = (valid[:, None] & valid[None, :] & (depth[None, :] + 1 == depth[:, None])
                       & (ident[None, :] == parent_ident[:, None]))  # (m, i): slot i holds m's prefix minus its last label
            has_ext = has_rep & (tl.max(src_hit.to(tl.int32), 1) > 0)
            i_src = tl.min(tl.where(src_hit, ms[None, :], BP), 1)
            s_src = tl.max(tl.where(src_hit, s[None, :], neg), 1)
            total_src = tl.max(tl.where(src_hit, total[None, :], neg), 1)
            last_src = tl.max(tl.where(src_hit, last[None, :], -1), 1)
            ext_repeats = last_src == last  # the parent ends in the same label: only its blank-ending paths extend
            s_own = tl.where(valid & has_blank, total + p_blank, neg)
            ns_own = _log_add(tl.where(has_rep, ns + p_rep, neg),
                              tl.where(has_ext, tl.where(ext_repeats, s_src, total_src) + p_rep, neg))
            o_ext = tl.where(has_ext, (j_rep * BP + i_src) * 2 + ext_repeats.to(tl.int32), big)
            order_own = tl.minimum(tl.minimum(tl.where(valid & has_blank, (j_blank * BP + ms) * 2, big),
                                              tl.where(has_rep, (j_rep * BP + ms) * 2, big)), o_ext)
            # extensions: new prefixes, unless one is a prefix of the beam already (merged into its slot above)
            repeats = lab[:, None] == last[None, :]  # (j, i)
            order_e = (js[:, None] * BP + ms[None, :]) * 2 + repeats.to(tl.int32)
            merged = tl.max((order_e[:, :, None] == o_ext[None, None, :]).to(tl.int32), 2) > 0
            score = tl.where(own, _log_add(s_own, ns_own)[None, :],
                             tl.where(repeats, s[None, :], total[None, :]) + p[:, None])
            order = tl.where(own, order_own[None, :], order_e)
            alive = tl.where(own, (valid & (has_blank | has_rep | has_ext))[None, :],
                             jvalid[:, None] & (lab[:, None] != BLANK) & valid[None, :] & ~merged)
            count = tl.minimum(tl.sum(alive.to(tl.int32)), BEAM)
            # the best BEAM keys in order: by score, ties by first touch
            rank = tl.full([R, BP], BP, tl.int32)
            for r in tl.static_range(BEAM):
                row_best = tl.reduce((tl.where(alive, score, neg), tl.where(alive, order, big)), 1, _better)
                _, first = tl.reduce(row_best, 0, _better)  # (rows, then columns: the interpreter reduces one axis)
                picked = alive & (order == first)
                rank = tl.where(picked, r, rank)
                alive = alive & ~picked
            # the next beam: each kept key written to its rank's slot; new prefixes become trie nodes
            keep = rank < BEAM
            child = 1 + t * BEAM + rank
            new = keep & ~own
            tl.store(trie_parent + child, node[None, :] + 0 * rank, mask=new)
            tl.store(trie_label + child, lab[:, None] + 0 * rank, mask=new)
            tl.store(slots_i + rank, tl.where(own, node[None, :], child), mask=keep)
            tl.store(slots_i + BP + rank, tl.where(own, last[None, :], lab[:, None]), mask=keep)
            tl.store(slots_i + 2 * BP + rank, depth[None, :] + (~own).to(tl.int32), mask=keep)
            tl.store(slots_h + rank, tl.where(own, ident[None, :], _extend_hash(ident[None, :], lab[:, None])),
                     mask=keep)
            tl.store(slots_h + BP + rank, tl.where(own, parent_ident[None, :], ident[None, :]), mask=keep)
            tl.store(slots_f + rank, tl.where(own, s_own[None, :], neg), mask=keep)
            tl.store(slots_f + BP + rank, tl.where(own, ns_own[None, :], score), mask=keep)
            tl.store(slots_f + 2 * BP + rank, score, mask=keep)
            tl.debug_barrier()
            valid = ms < count
            node = tl.load(slots_i + ms, mask=valid, other=0)
            last = tl.load(slots_i + BP + ms, mask=valid, other=-1)
            depth = tl.load(slots_i + 2 * BP + ms, mask=valid, other=0)
            ident = tl.load(slots_h + ms, mask=valid, other=0)
            parent_ident = tl.load(slots_h + BP + ms, mask=valid, other=0)
            s = tl.load(slots_f + ms, mask=valid, other=neg)
            ns = tl.load(slots_f + BP + ms, mask=valid, other=neg)
            total = tl.load(slots_f + 2 * BP + ms, mask=valid, other=neg)
            tl.debug_barrier()  # every slot read before the next frame writes them
            p, lab = p_next.to(tl.float64), lab_next.to(tl.int32)
            t += 1
        out = b * BEAM + ms
        tl.store(COUNT + b, count.to(tl.int64))
        tl.store(SCORES + out, total, mask=valid)
        tl.store(TOKEN_LENGTHS + out, depth.to(tl.int64), mask=valid)
        # each prefix's labels, read back from its trie node to the root
        position = depth - 1
        longest = tl.max(depth, 0)
        step = 0
        while step < longest:
            reading = valid & (position >= 0)
            tl.store(TOKENS + out.to(tl.int64) * T + position, tl.load(trie_label + node, mask=reading, other=0),
                     mask=reading)
            node = tl.load(trie_parent + node, mask=reading, other=0)
            position -= 1
            step += 1


def prefix_beam_search(top_logp: torch.Tensor, top_ids: torch.Tensor, lengths: torch.Tensor, beam_size: int,
                       blank: int = 0, num_warps: int = 8, kernel: str | None = None) -> tuple[torch.Tensor, ...]:
    """Each frame's top-k (log-probs (B, T, k) float32, labels (B, T, k); best first is fastest: the CUDA kernel prunes
    only such frames) and the lengths (B,) on one device ->
    the n-best in ``runtime.search.NBest``'s layout, on that device: tokens (B, beam, T) int32, lengths (B, beam)
    int64, scores (B, beam) float64, count (B,) int64. Queued on the current stream. ``kernel``: "cuda" or "triton"
    (default: the CUDA kernel where it can be built and serves the beam, else Triton's)."""
    batch, frames, k = top_logp.shape
    device = top_logp.device
    tokens = torch.zeros((batch, beam_size, frames), dtype=torch.int32, device=device)
    token_lengths = torch.zeros((batch, beam_size), dtype=torch.int64, device=device)
    scores = torch.zeros((batch, beam_size), dtype=torch.float64, device=device)
    count = torch.zeros(batch, dtype=torch.int64, device=device)
    trie = torch.empty((batch, 2, 1 + frames * beam_size), dtype=torch.int32, device=device)
    top_logp, top_ids = top_logp.float().contiguous(), top_ids.to(torch.int32).contiguous()
    lengths = lengths.to(device=device, dtype=torch.int32)
    cuda = cuda_kernel(device) if kernel != "triton" and device.type == "cuda" else None
    if kernel == "cuda" and cuda is None:
        raise RuntimeError("the CUDA prefix-search kernel cannot be built here (no nvcc)")
    if cuda is not None and max(beam_size, k) <= cuda.max_beam:
        error = cuda.prefix_beam_search_gpu(
            pointer(top_logp), pointer(top_ids), pointer(lengths), batch, frames, k, beam_size, blank, pointer(trie),
            pointer(tokens), pointer(token_lengths), pointer(scores), pointer(count),
            torch.cuda.current_device() if device.index is None else device.index,
            ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream))
        if error:
            raise RuntimeError(f"CUDA prefix search launch failed (cudaError_t {error})")
        return tokens, token_lengths, scores, count
    rows, bp = triton.next_power_of_2(k + 1), triton.next_power_of_2(beam_size)
    slots_i = torch.empty((batch, 3, bp), dtype=torch.int32, device=device)
    slots_h = torch.empty((batch, 2, bp), dtype=torch.uint64, device=device)
    slots_f = torch.empty((batch, 3, bp), dtype=torch.float64, device=device)
    _prefix_beam_search_kernel[(batch,)](
        top_logp, top_ids, lengths, tokens, token_lengths, scores, count, trie, slots_i, slots_h, slots_f, frames,
        BLANK=blank, K=k, BEAM=beam_size, R=rows, BP=bp, num_warps=num_warps)
    return tokens, token_lengths, scores, count


@functools.cache
def cuda_kernel(device: torch.device) -> ctypes.CDLL | None:
    """The CUDA search for ``device``'s GPUs, or None (with a warning, once) where nvcc cannot build it. build.py calls
    it, so that the build compiles it and a run's first batch does not wait for nvcc."""
    try:
        library = load_cuda("prefix_beam_search_gpu", torch.cuda.get_device_capability(device))
    except NativeBuildError as e:
        warnings.warn(f"CUDA prefix search unavailable ({e}); using the Triton kernel", RuntimeWarning, stacklevel=3)
        return None
    library.prefix_beam_search_gpu.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_int32] * 5 + [ctypes.c_void_p] * 5
                                               + [ctypes.c_int32, ctypes.c_void_p])
    library.prefix_beam_search_gpu.restype = ctypes.c_int
    library.prefix_beam_search_max_beam.restype = ctypes.c_int
    library.max_beam = library.prefix_beam_search_max_beam()  # asked once, not per launch
    return library
