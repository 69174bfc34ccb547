"""The rescoring decoder's trie inputs made on the GPU from the prefix search's n-best, each hypothesis its own chain.

Why: built on the host (``runtime.trie``), the tries cost a wait for the search, a copy of its n-best to the host, the
tries' construction and their copy back: 1.4 ms in which the GPU idles, for one 10 s file (H200, u2++). Here the
n-best never leaves the device before the rescoring is queued. The price is sharing: each hypothesis of utterance b is
a branch of N x (T + 1) slots under one root (T: the n-best's width, at most the encoder frames), its tokens then
eos, the slots past its eos padding. The decoder runs all 1 + N (T + 1) rows of each utterance, so this serves small
batches, whose decoder time is launch-bound, not the throughput path (``runtime.transcriber``).

The arrays are ``runtime.trie.PackedTries``'s: a chain is a valid trie (pre-order, node j an ancestor of node i
exactly where j <= i < ends[j]); padding slots have ends 0 (no row attends to them), token and position 0, the root
as parent, and their utterance.
"""

from __future__ import annotations

import torch

from plugins import tl, triton
from runtime.trie import PackedTries

if triton is not None:

    @triton.jit
    def _chain_tries_kernel(TOKENS, LENGTHS, COUNT, NODE_TOKENS, POSITIONS, PARENTS, UTTERANCES, ENDS, STARTS, PATHS,
                            T, SOS: tl.constexpr, EOS: tl.constexpr, N: tl.constexpr, REVERSE: tl.constexpr,
                            BLOCK: tl.constexpr):
        b, r = tl.program_id(0), tl.program_id(1)
        steps = T + 1  # a hypothesis' slots: at most T tokens, then eos
        size = 1 + N * steps  # an utterance's trie
        root = b * size
        length = tl.where(r < tl.load(COUNT + b), tl.load(LENGTHS + b * N + r), -1).to(tl.int32)  # absent: no slots
        first = 1 + r * steps  # the hypothesis' first slot in its trie
        t0 = 0
        while t0 < steps:  # a `while`: Triton's interpreter cannot take a `range` over a runtime value
            t = t0 + tl.arange(0, BLOCK)
            inside = t < steps
            real = t <= length
            if REVERSE:
                at = length - 1 - t
            else:
                at = t
            token = tl.load(TOKENS + (b * N + r) * T + at, mask=inside & (t < length), other=EOS)
            local = first + t
            node = root + local
            tl.store(NODE_TOKENS + node, tl.where(real, token, 0), mask=inside)
            tl.store(POSITIONS + node, tl.where(real, t + 1, 0), mask=inside)
            tl.store(PARENTS + node, tl.where(real & (t > 0), node - 1, root), mask=inside)
            tl.store(UTTERANCES + node, tl.zeros_like(t) + b, mask=inside)
            tl.store(ENDS + local + root, tl.where(real, first + length + 1, 0), mask=inside)
            tl.store(PATHS + (b * N + r) * steps + t, tl.where(real, node, 0), mask=inside)
            t0 += BLOCK
        if r == 0:
            tl.store(NODE_TOKENS + root, SOS)
            tl.store(POSITIONS + root, 0)
            tl.store(PARENTS + root, root)
            tl.store(UTTERANCES + root, b)
            tl.store(ENDS + root, size)
            tl.store(STARTS + b, root)


def chain_tries(tokens: torch.Tensor, lengths: torch.Tensor, count: torch.Tensor, sos: int, eos: int,
                reverse: bool = False) -> PackedTries:
    """An n-best in ``runtime.search.NBest``'s layout (tokens (B, N, T) int32, lengths (B, N), count (B,), on one
    device), each hypothesis (reversed if ``reverse``) a chain of its trie: ``PackedTries`` of device tensors, with
    B (1 + N (T + 1)) nodes, ends (B, 1 + N (T + 1)) and paths (B, N, T + 1). Queued on the current stream."""
    batch, n, width = tokens.shape
    size = 1 + n * (width + 1)
    device = tokens.device

    def empty(*shape):
        return torch.empty(shape, dtype=torch.int32, device=device)

    out = PackedTries(empty(batch * size), empty(batch * size), empty(batch * size), empty(batch * size),
                      empty(batch, size), empty(batch), empty(batch, n, width + 1))
    _chain_tries_kernel[(batch, n)](tokens.contiguous(), lengths.contiguous(), count.contiguous(), out.tokens,
                                    out.positions, out.parents, out.utterances, out.ends, out.starts, out.paths,
                                    width, SOS=sos, EOS=eos, N=n, REVERSE=reverse,
                                    BLOCK=min(256, triton.next_power_of_2(width + 1)))
    return out
