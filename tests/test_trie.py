"""The n-best as a prefix tree (``runtime.trie``), against the definition: one node per distinct prefix of
[sos] hypothesis [eos], ancestors exactly the path's nodes, each hypothesis' steps along its path."""

import numpy as np
import pytest
import torch

from runtime.trie import PackedTries, build_trie, packed_tries
from tests.conftest import under_triton_interpreter

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


def assert_paths_spell_the_nbest(tokens, positions, parents, ends, paths, nbest, reverse):
    """One utterance's trie (its own node numbering): each hypothesis' path, the root then ``paths[r]`` up to its
    eos, holds [sos] h [eos] (reversed h if ``reverse``) at depths 0, 1, ..., each node's parent the one before it and
    its ancestors (node j is one of node i's where j <= i < ends[j]) exactly the path so far; paths are 0 past each
    eos and for absent hypotheses."""
    sequences = [[SOS] + (h[::-1] if reverse else h) + [EOS] for h in nbest]
    ancestors = [{j for j in range(i + 1) if i < ends[j]} for i in range(int(ends[0]))]
    for r, s in enumerate(sequences):
        path = [0] + paths[r, :len(s) - 1].tolist()
        assert tokens[path].tolist() == s
        assert positions[path].tolist() == list(range(len(s)))
        assert parents[path[1:]].tolist() == path[:-1]
        for d, node in enumerate(path):
            assert ancestors[node] == set(path[:d + 1])
        assert not paths[r, len(s) - 1:].any()
    assert not paths[len(nbest):].any()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_trie_is_the_prefix_tree_of_the_nbest(seed, reverse):
    hyps, tokens, lengths, count = random_nbest(seed)
    trie = build_trie(tokens, lengths, count, SOS, EOS, reverse)
    for b, nbest in enumerate(hyps):
        sequences = [[SOS] + (h[::-1] if reverse else h) + [EOS] for h in nbest]
        size = int(trie.nodes[b])
        assert size == len({tuple(s[:d + 1]) for s in sequences for d in range(len(s))})  # one node per prefix
        assert not trie.tokens[b, size:].any() and not trie.ends[b, size:].any()  # padding: zeros
        assert_paths_spell_the_nbest(trie.tokens[b], trie.positions[b], trie.parents[b], trie.ends[b], trie.paths[b],
                                     nbest, reverse)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_native_packed_tries_are_the_packed_prefix_trees(seed, reverse):
    """``packed_tries`` (native code) gives ``build_trie(...).packed()``'s arrays, element for element, also for
    a batch of one and for an n-best read through a slice (not contiguous)."""
    from runtime.trie import _native

    _native()  # the native code must build here (as in CI): otherwise packed_tries would compare numpy with itself
    _, tokens, lengths, count = random_nbest(seed)
    n = tokens.shape[1] - 1
    for args in ((tokens, lengths, count), (tokens[:1], lengths[:1], count[:1]),
                 (tokens[:, :n], lengths[:, :n], np.minimum(count, n))):
        expected = build_trie(*args, SOS, EOS, reverse).packed()
        got = packed_tries(*args, SOS, EOS, reverse)
        for name in PackedTries._fields:
            assert getattr(got, name).dtype == np.int32, name
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)


def fitted_size(seed: int) -> int:
    """The fewest trie slots per utterance that hold the chains of every utterance of ``random_nbest(seed)``."""
    hyps = random_nbest(seed)[0]
    return max(1 + sum(len(h) + 1 for h in nbest) for nbest in hyps)


def chain_arrays(seed: int, reverse: bool, device: str = "cpu", sos: int = SOS, eos: int = EOS,
                 size: int | None = None) -> list[list]:
    """``plugins.chain_tries`` of ``random_nbest(seed)`` on ``device`` (``size`` slots an utterance), as lists (from a
    child process)."""
    from plugins.chain_tries import chain_tries

    _, tokens, lengths, count = random_nbest(seed)
    tries = chain_tries(*(torch.from_numpy(a).to(device) for a in (tokens, lengths, count)), sos, eos, reverse, size)
    return [t.cpu().tolist() for t in tries]


def chain_tries_on(device: str, seed: int, reverse: bool, size: int) -> PackedTries:
    """``chain_arrays`` under Triton's interpreter (``device`` "interpreter") or on the GPU ("cuda"), as numpy arrays;
    the test skips where that cannot run."""
    pytest.importorskip("triton")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    arrays = (under_triton_interpreter(f"t.chain_arrays({seed}, {reverse}, size={size})", "tests.test_trie")
              if device == "interpreter" else chain_arrays(seed, reverse, "cuda", size=size))
    return PackedTries(*map(np.array, arrays))


def test_chain_tries_fit_exactly_the_fitted_size():
    from plugins.chain_tries import chain_tries_fit

    for seed in range(3):
        _, _, lengths, count = random_nbest(seed)
        lengths = lengths.copy()
        for b, c in enumerate(count):
            lengths[b, c:] = 99  # what lies past an utterance's count is not a hypothesis
        assert chain_tries_fit(lengths, count, fitted_size(seed))
        assert not chain_tries_fit(lengths, count, fitted_size(seed) - 1)


def test_rescored_nbest_is_ranked_best_first_ties_in_order_absent_ones_left_out():
    """``RescoringScores.results``: WeNet's best is the first of the highest scores (its strict '>'), so equal scores
    keep the n-best's order; slots past an utterance's count are not hypotheses, whatever their score."""
    from runtime.decoding import RescoringScores
    from runtime.search import NBest

    tokens = np.arange(2 * 3 * 2, dtype=np.int32).reshape(2, 3, 2)
    nbest = NBest(tokens, np.full((2, 3), 2), np.zeros((2, 3)), np.array([3, 2]))
    scores = torch.tensor([[-1.0, -0.5, -0.5], [-2.0, -3.0, 5.0]])
    first, second = RescoringScores(nbest, scores, None).results()
    assert first.tokens == [2, 3] and first.nbest == [[2, 3], [4, 5], [0, 1]] and first.nbest_scores == [-0.5, -0.5, -1.0]
    assert second.tokens == [6, 7] and second.nbest == [[6, 7], [8, 9]] and second.nbest_scores == [-2.0, -3.0]


@pytest.mark.parametrize("device", ["interpreter", "cuda"])
def test_chain_tries_too_small_stay_in_their_slots(device):
    """Tries of fewer slots than an n-best needs (its caller rescores it otherwise) are still written whole, each
    utterance's slots by its own chains, and their paths point inside them."""
    from plugins.chain_tries import chain_tries_fit

    size = 8
    _, _, lengths, count = random_nbest(0)
    assert not any(chain_tries_fit(lengths[b:b + 1], count[b:b + 1], size) for b in range(len(count)))  # none fits
    packed = chain_tries_on(device, 0, False, size)
    batch = len(random_nbest(0)[0])
    assert (packed.utterances == np.repeat(np.arange(batch), size)).all()
    assert (packed.parents // size == packed.utterances).all()
    assert ((packed.paths == 0) | (packed.paths // size == np.arange(batch)[:, None, None])).all()


@pytest.mark.parametrize("device", ["interpreter", "cuda"])
@pytest.mark.parametrize("fitted", [False, True], ids=["any_nbest", "fitted"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_chain_tries_are_tries_of_the_nbest(seed, reverse, fitted, device):
    """The GPU's tries (each hypothesis a chain of slots under the root, padding slots unreachable) are tries of the
    n-best in ``PackedTries``' layout, packed per utterance: in slots for any n-best of its width, or in the fewest
    that hold it (chains back to back, the padding after the last)."""
    hyps, tokens, _, _ = random_nbest(seed)
    size = fitted_size(seed) if fitted else 1 + tokens.shape[1] * (tokens.shape[2] + 1)
    packed = chain_tries_on(device, seed, reverse, size)
    assert packed.ends.shape == (len(hyps), size) and packed.paths.shape == (*tokens.shape[:2], tokens.shape[2] + 1)
    for b, nbest in enumerate(hyps):
        start = packed.starts[b]
        assert start == b * size and packed.ends[b, 0] == size
        own = slice(start, start + size)
        assert (packed.utterances[own] == b).all()
        reached = np.zeros(size, dtype=bool)  # the root and the slots of each hypothesis' path; the rest is padding
        reached[0] = True
        reached[packed.paths[b, :len(nbest)][packed.paths[b, :len(nbest)] > 0] - start] = True
        assert not packed.ends[b][~reached].any()
        assert_paths_spell_the_nbest(packed.tokens[own], packed.positions[own], packed.parents[own] - start,
                                     packed.ends[b], np.where(packed.paths[b] > 0, packed.paths[b] - start, 0),
                                     nbest, reverse)


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


@pytest.mark.parametrize("fitted", [False, True], ids=["any_nbest", "fitted"])
def test_decoder_scores_over_chain_tries_are_those_over_shared_tries(random_models, fitted):
    """The u2++ decoder (fp32, PyTorch lowering) scores every hypothesis alike over the tries the host shares and the
    chains the GPU makes (padding slots included), both directions."""
    from runtime.decoding import WeNetDecoding
    from runtime.search import NBest
    from runtime.session import EngineDir

    decoding = WeNetDecoding(EngineDir(random_models["u2pp"][1], "cpu"))
    sos, eos = decoding.model.sos, decoding.model.eos
    hyps, tokens, lengths, count = random_nbest(4)
    scores = np.random.default_rng(0).normal(size=lengths.shape)
    chains = [PackedTries(*(torch.tensor(a, dtype=torch.int32) for a in under_triton_interpreter(
        f"t.chain_arrays(4, {reverse}, sos={sos}, eos={eos}, size={fitted_size(4) if fitted else None})",
        "tests.test_trie"))) for reverse in (False, True)]
    chained = decoding.decoder_inputs(torch.from_numpy(lengths + 1).int(), torch.from_numpy(scores).float(), chains,
                                      torch.tensor([0.4]), torch.tensor([0.3]))
    shared = decoding.rescoring_inputs(NBest(tokens, lengths, scores, count), 0.4, 0.3)
    g = torch.Generator().manual_seed(0)
    encoder_out = torch.randn(len(hyps), 30, decoding.model.d_model, generator=g)
    encoder_lens = torch.tensor([30, 17, 1, 30, 9], dtype=torch.int32)
    ours, theirs = (decoding.launch_rescoring(None, inputs, encoder_out, encoder_lens).scores
                    for inputs in (chained, shared))
    for b, n in enumerate(count):
        torch.testing.assert_close(ours[b, :n], theirs[b, :n], rtol=1e-5, atol=1e-4)
