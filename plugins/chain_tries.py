"""The rescoring decoder's trie inputs made on the GPU from the prefix search's n-best, each hypothesis its own chain.

Why: built on the host (``runtime.trie``), the tries cost a wait for the search, a copy of its n-best to the host, the
tries' construction and their copy back: 1.4 ms in which the GPU idles, for one 10 s file (H200, u2++). Here the
n-best never leaves the device before the rescoring is queued. The price is sharing: each hypothesis of utterance b is
a chain of its tokens then eos under one root, the chains back to back in a trie of a fixed ``size`` (the decoder's
rows, fixed for a CUDA graph), the slots past the last chain padding. The decoder runs all ``size`` rows of each
utterance, so this serves small batches, whose decoder time is launch-bound, not the throughput path
(``runtime.transcriber``). N (T + 1) + 1 slots hold any n-best of width T; fewer serve the usual n-best, and
``chain_tries_fit`` tells which n-best they hold.

The arrays are ``runtime.trie.PackedTries``'s: a chain is a valid trie (pre-order, node j an ancestor of node i
exactly where j <= i < ends[j]); padding slots have ends 0 (no row attends to them), token and position 0, the root
as parent, and their utterance.
"""

from __future__ import annotations

import numpy as np
import torch

from plugins import tl, triton
from runtime.trie import PackedTries

if triton is not None:

    @triton.jit
    def _chain_tries_kernel(TOKENS, LENGTHS, COUNT, NODE_TOKENS, POSITIONS, PARENTS, UTTERANCES, ENDS, STARTS, PATHS,
                            T, SIZE, SOS: tl.constexpr, EOS: tl.constexpr, N: tl.constexpr, BLOCK_N: tl.constexpr,
                            REVERSE: tl.constexpr, BLOCK: tl.constexpr):
        b, r = tl.program_id(0), tl.program_id(1)
        steps = T + 1  # a hypothesis' steps: at most T tokens, then eos
        root = b * SIZE
        hyps = tl.arange(0, BLOCK_N)
        lengths = tl.load(LENGTHS + b * N + hyps, mask=hyps < N, other=-1)
        lengths = tl.where(hyps < tl.load(COUNT + b), lengths, -1).to(tl.int32)  # absent: no slots
        length = tl.sum(tl.where(hyps == r, lengths, 0))
        first = 1 + tl.sum(tl.where(hyps < r, lengths + 1, 0))  # the chain's first slot: after the root and those before
        # the slots this program writes: its chain, and for the last hypothesis the padding up to SIZE
        end = tl.minimum(tl.where(r == N - 1, SIZE, first + length + 1), SIZE)
        t0 = 0
        while first + t0 < end:  # a `while`: Triton's interpreter cannot take a `range` over a runtime value
            t = t0 + tl.arange(0, BLOCK)
            local = first + t
            inside = local < end
            real = t <= length
            if REVERSE:
                at = length - 1 - t
            else:
                at = t
            token = tl.load(TOKENS + (b * N + r) * T + at, mask=inside & (t < length), other=EOS)
            node = root + local
            tl.store(NODE_TOKENS + node, tl.where(real, token, 0), mask=inside)
            tl.store(POSITIONS + node, tl.where(real, t + 1, 0), mask=inside)
            tl.store(PARENTS + node, tl.where(real & (t > 0), node - 1, root), mask=inside)
            tl.store(UTTERANCES + node, tl.zeros_like(t) + b, mask=inside)
            tl.store(ENDS + node, tl.where(real, first + length + 1, 0), mask=inside)
            t0 += BLOCK
        # the path: slot by slot, 0 past eos and past the trie's end (a chain that does not fit: its caller checks)
        t0 = 0
        while t0 < steps:
            t = t0 + tl.arange(0, BLOCK)
            held = (t <= length) & (first + t < SIZE)
            tl.store(PATHS + (b * N + r) * steps + t, tl.where(held, root + first + t, 0), mask=t < steps)
            t0 += BLOCK
        if r == 0:
            tl.store(NODE_TOKENS + root, SOS)
            tl.store(POSITIONS + root, 0)
            tl.store(PARENTS + root, root)
            tl.store(UTTERANCES + root, b)
            tl.store(ENDS + root, SIZE)
            tl.store(STARTS + b, root)


def chain_slots(lengths: np.ndarray, count: np.ndarray) -> int:
    """The most slots an utterance's chains take: the root, then each hypothesis' tokens and eos (``lengths`` (B, N)
    and ``count`` (B,) of an n-best). Python over lists: at batch 1 this is on the rescoring's critical path, where
    numpy's calls took 21 us of host (H200 machine), Python's a few."""
    return max(1 + c + sum(row[:c]) for row, c in zip(lengths.tolist(), count.tolist()))


def chain_tries_fit(lengths: np.ndarray, count: np.ndarray, size: int) -> bool:
    """Whether tries of ``size`` slots hold every utterance's chains (``chain_slots``)."""
    return chain_slots(lengths, count) <= size


def chain_tries(tokens: torch.Tensor, lengths: torch.Tensor, count: torch.Tensor, sos: int, eos: int,
                reverse: bool = False, size: int | None = None) -> PackedTries:
    """An n-best in ``runtime.search.NBest``'s layout (tokens (B, N, T) int32, lengths (B, N), count (B,), on one
    device), each hypothesis (reversed if ``reverse``) a chain of its trie: ``PackedTries`` of device tensors, with
    ``size`` nodes an utterance (default 1 + N (T + 1), which holds any n-best), ends (B, size) and paths
    (B, N, T + 1). Queued on the current stream. Where an utterance's chains do not fit (``chain_tries_fit``) its
    tries and paths are wrong."""
    batch, n, width = tokens.shape
    size = 1 + n * (width + 1) if size is None else size
    device = tokens.device

    def empty(*shape):
        return torch.empty(shape, dtype=torch.int32, device=device)

    out = PackedTries(empty(batch * size), empty(batch * size), empty(batch * size), empty(batch * size),
                      empty(batch, size), empty(batch), empty(batch, n, width + 1))
    _chain_tries_kernel[(batch, n)](tokens.contiguous(), lengths.contiguous(), count.contiguous(), out.tokens,
                                    out.positions, out.parents, out.utterances, out.ends, out.starts, out.paths,
                                    width, size, SOS=sos, EOS=eos, N=n, BLOCK_N=triton.next_power_of_2(n),
                                    REVERSE=reverse, BLOCK=min(256, triton.next_power_of_2(width + 1)))
    return out
