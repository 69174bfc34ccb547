"""An utterance's n-best as a prefix tree (trie): what the rescoring decoder runs over.

Teacher-forced through a causal decoder, a token's output depends only on the tokens before it, so hypotheses
that share a prefix share its work. A CTC prefix beam search's n-best shares most of it: on 200 files of real
speech through the u2++ recipe at real size (random weights), the 10 hypotheses of an utterance averaged 158
tokens but only 170 distinct prefixes. So the left-to-right decoder runs once per trie node, each node attending
to its ancestors (the tree mask of ``F.attention``), and a hypothesis' score sums the log-probs along its path.
The right-to-left decoder reads the hypotheses reversed, so its trie shares their common suffixes, fewer as
hypotheses differ near their end: 1,120 nodes for the same 1,580 tokens.

Each hypothesis is the path [sos] tokens [eos], its eos a leaf of its own, so every scored step (the tokens, then
eos) is one node: scored by its parent's output at its own token.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import NamedTuple

import numpy as np

from runtime.native import NativeBuildError, pointer
from runtime.native import load as load_native


class Trie(NamedTuple):
    """A batch's tries, node 0 of each the root (sos), nodes in pre-order; padding nodes are all zeros.

    Node j is an ancestor of node i (or i itself) exactly where j <= i < ends[b, j]: in pre-order a subtree is
    the run of nodes after its root. ``paths[b, r, t]`` is the node of step t of hypothesis r (in the n-best's
    order): its token t for t < length, then its eos node.
    """

    tokens: np.ndarray  # (B, M) int32: each node's token, the decoder's input there
    positions: np.ndarray  # (B, M) int32: depth, the position in its hypotheses
    ends: np.ndarray  # (B, M) int32: one past the node's subtree
    parents: np.ndarray  # (B, M) int32: the node whose output scores this node's token (the root: itself)
    paths: np.ndarray  # (B, N, S) int32, S = the longest hypothesis + 1

    @property
    def nodes(self) -> np.ndarray:
        """(B,) nodes of each utterance's trie."""
        return (self.ends[:, 0]).astype(np.int64)

    def packed(self) -> PackedTries:
        """The batch's tries back to back, without padding nodes, as the rescoring decoder reads them."""
        nodes = self.nodes
        starts = (np.cumsum(nodes) - nodes).astype(np.int32)
        real = np.arange(self.ends.shape[1]) < nodes[:, None]
        return PackedTries(self.tokens[real], self.positions[real], (self.parents + starts[:, None])[real],
                           np.repeat(np.arange(len(nodes), dtype=np.int32), nodes), self.ends, starts,
                           self.paths + starts[:, None, None])


class PackedTries(NamedTuple):
    """``Trie``'s arrays with the utterances' nodes back to back: node p of the batch is node p - starts[b] of
    utterance b = utterances[p]. Numpy arrays from ``packed_tries`` (or ``Trie.packed``); the same as tensors for
    the decoder, or made on the GPU (``plugins.chain_tries``)."""

    tokens: np.ndarray  # (P,) int32
    positions: np.ndarray  # (P,) int32
    parents: np.ndarray  # (P,) int32: a packed node
    utterances: np.ndarray  # (P,) int32
    ends: np.ndarray  # (B, M) int32: in each trie's own numbering, as ``Trie.ends``
    starts: np.ndarray  # (B,) int32: each utterance's first (root) node
    paths: np.ndarray  # (B, N, S) int32: packed nodes


def packed_tries(tokens: np.ndarray, lengths: np.ndarray, count: np.ndarray, sos: int, eos: int,
                 reverse: bool = False) -> PackedTries:
    """The tries of a batch's n-best, packed: hypothesis r < count[b] of utterance b is
    ``tokens[b, r, :lengths[b, r]]`` (reversed if ``reverse``). Native code where a C++ compiler is at hand
    (``hypothesis_trie.cc``: the arrays of ``build_trie(...).packed()``, 5x faster for 64 utterances, the GIL
    released), else that."""
    try:
        native = _native()
    except NativeBuildError:
        return build_trie(tokens, lengths, count, sos, eos, reverse).packed()
    batch, n = lengths.shape
    tokens, lengths = np.ascontiguousarray(tokens, dtype=np.int32), np.ascontiguousarray(lengths, dtype=np.int64)
    count = np.ascontiguousarray(count, dtype=np.int64)
    args = [pointer(tokens), pointer(lengths), pointer(count), batch, n, tokens.shape[2], sos, eos, int(reverse)]
    nodes = np.zeros(batch, dtype=np.int64)
    native.hypothesis_trie_sizes(*args, pointer(nodes))
    total, size = int(nodes.sum()), int(nodes.max(initial=1))
    steps = int(np.where(np.arange(n) < count[:, None], lengths, 0).max(initial=0)) + 1
    # every array a view of one zeroed block: one allocation, and pointers as offsets (a batch-1 rescoring call
    # is host-bound, ~1 us per array handed over)
    shapes = [(total,)] * 4 + [(batch, size), (batch,), (batch, n, steps)]
    block = np.zeros(sum(map(math.prod, shapes)), dtype=np.int32)
    arrays, offsets, offset, base = [], [], 0, block.ctypes.data
    for shape in shapes:
        arrays.append(block[offset:offset + math.prod(shape)].reshape(shape))
        offsets.append(base + offset * block.itemsize)
        offset += math.prod(shape)
    native.packed_hypothesis_tries(*args, size, steps, *offsets)
    return PackedTries(*arrays)


def build_trie(tokens: np.ndarray, lengths: np.ndarray, count: np.ndarray, sos: int, eos: int,
               reverse: bool = False) -> Trie:
    """The tries of a batch's n-best, padded (``packed_tries`` packs them): hypothesis r < count[b] of utterance b
    is ``tokens[b, r, :lengths[b, r]]`` (reversed if ``reverse``). Whole-array numpy over the batch, with one step
    per hypothesis rank (a Python step per token would cost more than the decoder)."""
    batch, n = lengths.shape
    real = np.arange(n) < count[:, None]
    lens = np.where(real, lengths, 0).astype(np.int32)
    width = int(lens.max(initial=0)) + 2  # [sos] tokens [eos]
    depth = np.arange(width, dtype=np.int32)
    # each hypothesis as its sequence of node tokens, -1 after its eos (sorts before every token: a prefix first)
    inside = depth[1:-1] <= lens[..., None]  # depths 1 .. width - 2 that hold a token
    at = lens[..., None] - depth[1:-1] if reverse else depth[:-2]  # its index in the hypothesis
    rows = np.arange(batch * n).reshape(batch, n, 1) * tokens.shape[2]
    seq = np.full((batch, n, width), -1, dtype=np.int32)
    seq[..., 0] = sos
    seq[..., 1:-1] = np.where(inside, tokens.ravel()[np.where(inside, rows + at, 0)], -1)
    seq.reshape(-1, width)[np.arange(batch * n), (lens + 1).ravel()] = eos
    # Sorted, each utterance's sequences are its trie's pre-order: a hypothesis adds the nodes past its longest
    # common prefix with the one before it. One sort of byte strings (big-endian: memcmp order is numeric order),
    # led by the utterance and whether the hypothesis is absent (absent ones last).
    keys = np.concatenate([np.broadcast_to(np.arange(batch, dtype=np.int32)[:, None, None], (batch, n, 1)),
                           (~real)[..., None].astype(np.int32), seq], axis=2) + 1
    keys = np.ascontiguousarray(keys.astype(">u4")).view(f"S{4 * (width + 2)}").reshape(batch * n)
    flat_order = np.argsort(keys, kind="stable")
    seq = seq.reshape(batch * n, width)[flat_order].reshape(batch, n, width)
    lens, real = lens.ravel()[flat_order].reshape(batch, n), real.ravel()[flat_order].reshape(batch, n)
    shared = np.ones((batch, n), dtype=np.int32)  # depths already in the trie: the root's for the first
    shared[:, 1:] = np.argmax(seq[:, 1:] != seq[:, :-1], axis=2)  # distinct sequences differ by their eos at latest
    shared[~real] = width + 1  # beyond every depth: no nodes, never ends a subtree
    added = np.where(real, lens + 2 - shared, 0)
    start = 1 + np.cumsum(added, axis=1) - added  # the hypothesis' first new node
    nodes = 1 + added.sum(axis=1)

    # On the (B, N, depth) grid of sorted hypotheses: path[b, k, d], the node at depth d of hypothesis k, its
    # shared depths from the one before it; and each node's subtree end, where the first later hypothesis leaves
    # it (the first k' > k sharing fewer than d + 1 depths).
    path = np.zeros((batch, n, width), dtype=np.int32)
    end = np.empty((batch, n, width), dtype=np.int32)
    previous = np.zeros((batch, width), dtype=np.int32)
    for k in range(n):
        path[:, k] = np.where(depth < shared[:, k, None], previous, start[:, k, None] + depth - shared[:, k, None])
        previous = path[:, k]
    end[:] = nodes[:, None, None]
    for k in range(n - 1, 0, -1):
        end[:, :k] = np.where(depth >= shared[:, k, None, None], start[:, k, None, None], end[:, :k])

    # each node written once, from the hypothesis that adds it (flat indices: cheaper than fancy 3-d ones)
    size = int(nodes.max())
    cells = np.flatnonzero(real[..., None] & (shared[..., None] <= depth) & (depth <= lens[..., None] + 1))
    target = cells // (n * width) * size + path.ravel()[cells]
    out = {}
    for name, values in (("tokens", seq.ravel()[cells]), ("positions", cells % width), ("ends", end.ravel()[cells]),
                         ("parents", path.ravel()[cells - 1])):  # new nodes have depth >= 1: their parent's cell
        out[name] = np.zeros((batch, size), dtype=np.int32)
        out[name].ravel()[target] = values
    out["tokens"][:, 0], out["ends"][:, 0] = sos, nodes  # the root
    # steps in the n-best's order: depths 1 .. length + 1 of each hypothesis' path
    rank = np.argsort(flat_order)
    paths = path.reshape(batch * n, width)[rank, 1:].reshape(batch, n, width - 1)
    steps = np.arange(width - 1) <= lens.ravel()[rank].reshape(batch, n, 1)
    paths = np.where(steps & (np.arange(n) < count[:, None])[..., None], paths, 0)
    return Trie(**out, paths=paths)


@functools.cache
def _native() -> ctypes.CDLL:
    lib = load_native("hypothesis_trie")
    common = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int32] * 3
    lib.hypothesis_trie_sizes.argtypes = common + [ctypes.c_void_p]
    lib.packed_hypothesis_tries.argtypes = common + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 7
    lib.hypothesis_trie_sizes.restype = lib.packed_hypothesis_tries.restype = None
    return lib
