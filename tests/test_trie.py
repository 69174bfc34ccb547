"""The n-best as a prefix tree (``runtime.trie``), against the definition: one node per distinct prefix of
[sos] hypothesis [eos], ancestors exactly the path's nodes, each hypothesis' steps along its path."""

import numpy as np
import pytest

from runtime.trie import build_trie, build_trie_numpy

SOS, EOS = 2, 3


def random_nbest(seed: int, batch: int = 5, n: int = 6):
    """Hypotheses that share prefixes and suffixes (edits of one base each), some utterances with fewer than n,
    one with an empty hypothesis, one a prefix of another; eos may occur inside one (a CTC output of random
    weights can be any unit), making a hypothesis' [sos] h [eos] a prefix of another's."""
    rng = np.random.default_rng(seed)
    hyps = []
    for b in range(batch):
        base = list(rng.integers(EOS, 9, size=rng.integers(0, 12)))
        nbest = {tuple(base)}
        while len(nbest) < rng.integers(1, n + 1):
            h = list(base)
            for _ in range(rng.integers(1, 3)):
                at = int(rng.integers(0, len(h) + 1))
                h[at:at + int(rng.integers(0, 2))] = list(rng.integers(EOS, 9, size=rng.integers(0, 2)))
            nbest.add(tuple(h))
        if b == 0:
            nbest |= {(), tuple(base[:3])}
        hyps.append([list(h) for h in nbest][:n])
    width = max(len(h) for u in hyps for h in u) + 1
    tokens = np.zeros((batch, n, width), dtype=np.int32)
    lengths = np.zeros((batch, n), dtype=np.int64)
    for b, u in enumerate(hyps):
        for r, h in enumerate(u):
            tokens[b, r, :len(h)], lengths[b, r] = h, len(h)
    return hyps, tokens, lengths, np.array([len(u) for u in hyps])


@pytest.mark.parametrize("build", [build_trie, build_trie_numpy], ids=["native", "numpy"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_trie_is_the_prefix_tree_of_the_nbest(seed, reverse, build):
    hyps, tokens, lengths, count = random_nbest(seed)
    trie = build(tokens, lengths, count, SOS, EOS, reverse)
    for b, nbest in enumerate(hyps):
        sequences = [[SOS] + (h[::-1] if reverse else h) + [EOS] for h in nbest]
        prefixes = {tuple(s[:d + 1]) for s in sequences for d in range(len(s))}
        size = int(trie.nodes[b])
        assert size == len(prefixes)
        assert not trie.tokens[b, size:].any() and not trie.ends[b, size:].any()  # padding: zeros
        ancestors = [{j for j in range(i + 1) if i < trie.ends[b, j]} for i in range(size)]
        for r, s in enumerate(sequences):
            path = [0] + trie.paths[b, r, :len(s) - 1].tolist()
            assert trie.tokens[b, path].tolist() == s
            assert trie.positions[b, path].tolist() == list(range(len(s)))
            assert trie.parents[b, path[1:]].tolist() == path[:-1]
            for d, node in enumerate(path):
                assert ancestors[node] == set(path[:d + 1])
            assert not trie.paths[b, r, len(s) - 1:].any()
        assert not trie.paths[b, len(nbest):].any()



@pytest.mark.parametrize("seed", range(3))
def test_packed_tries_are_the_tries_back_to_back(seed):
    hyps, tokens, lengths, count = random_nbest(seed)
    trie = build_trie(tokens, lengths, count, SOS, EOS, reverse=True)
    packed = trie.packed()
    nodes = trie.nodes
    assert len(packed.tokens) == nodes.sum() and packed.starts.tolist() == (np.cumsum(nodes) - nodes).tolist()
    for b, start in enumerate(packed.starts.tolist()):
        own = slice(start, start + int(nodes[b]))
        assert (packed.utterances[own] == b).all()
        assert packed.tokens[own].tolist() == trie.tokens[b, :nodes[b]].tolist()
        assert packed.positions[own].tolist() == trie.positions[b, :nodes[b]].tolist()
        assert (packed.parents[own] - start).tolist() == trie.parents[b, :nodes[b]].tolist()
        for r, h in enumerate(hyps[b]):  # each step's packed node holds the token of the trie's node
            steps = packed.paths[b, r, :len(h) + 1]
            assert packed.tokens[steps].tolist() == trie.tokens[b, trie.paths[b, r, :len(h) + 1]].tolist()
    assert packed.ends is trie.ends and all(a.dtype == np.int32 for a in packed if a is not trie.ends)
