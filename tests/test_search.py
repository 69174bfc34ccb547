"""The CTC prefix beam searches: native (C++) against the Python one, and the GPU one (Triton; under its interpreter on
the CPU) against the native one: identical n-best, scores and tie order."""

import pytest
import torch

from runtime.native import nvcc
from runtime.search import FrameCandidates, ctc_prefix_beam_search, frame_candidates, prefix_beam_search, prefix_search_on_host
from tests.conftest import compiled_variants, under_triton_interpreter

LENGTHS = [60, 1, 33, 47, 0, 8]


def log_probs(quantize: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(len(LENGTHS), 60, 30, generator=g) * 3
    logits[..., 0] += 2.0  # blank-heavy, as CTC outputs are
    if quantize:  # coarse values create exact ties, to check the tie order
        logits = torch.round(logits)
    return torch.log_softmax(logits, -1)


@pytest.mark.parametrize("quantize", [False, True])
def test_native_prefix_search_is_identical_to_python(quantize):
    lengths = torch.tensor(LENGTHS)
    for beam in (1, 4, 10):
        native = ctc_prefix_beam_search(log_probs(quantize), lengths, beam)
        top_logp, top_ids = log_probs(quantize).topk(beam, -1)
        for b, n in enumerate(LENGTHS):
            python = prefix_beam_search(top_logp[b, :n].tolist(), top_ids[b, :n].tolist(), beam, 0)
            assert native[b].nbest == python.nbest
            assert native[b].nbest_scores == python.nbest_scores  # bit for bit


def reentering(seed: int, vocab: int, scale: float) -> torch.Tensor:
    """(1, 12, vocab) log-probs where a prefix leaves the beam while its extension stays, and comes back (as a new
    trie node, whose extension must merge with the one in the beam): found by a search over seeds."""
    logits = torch.randn(12, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    return torch.log_softmax(logits, -1)[None]


def search_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """(name, log-probs, lengths, beam) of the GPU search's checks."""
    lengths = torch.tensor(LENGTHS)
    return [("random", log_probs(False), lengths, 10), ("ties", log_probs(True), lengths, 4),
            ("ties", log_probs(True), lengths, 1), ("re-entering", reentering(0, 3, 2.0), torch.tensor([12]), 3),
            ("re-entering", reentering(101, 4, 1.0), torch.tensor([12]), 4)]


def long_case() -> tuple[str, torch.Tensor, torch.Tensor, int]:
    """One utterance of 3,000 frames (hypotheses of ~2,600 labels, a trie of 30,001 nodes)."""
    logits = torch.randn(1, 3000, 30, generator=torch.Generator().manual_seed(5)) * 3
    logits[..., 0] += 2.0
    return "long", torch.log_softmax(logits, -1), torch.tensor([3000]), 10


def gpu_search_differences(device: str, kernel: str = "triton", cases: list | None = None,
                           shuffle: int | None = None) -> list[str]:
    """Where the GPU search's n-best arrays (``kernel``'s) differ from the native search's (its scores by more than
    1e-12: exp and log come from another math library). ``shuffle``: a seed; each frame's candidates then come to both
    searches in one random order, not best first."""
    from plugins.ctc_prefix_beam_search import prefix_beam_search as gpu_prefix_beam_search

    differences = []
    for case, lp, lengths, beam in cases or search_cases():
        # the native search's own candidates: a GPU top-k may order tied log-probs differently
        top_logp, top_ids = frame_candidates(lp, beam)[:2]
        if shuffle is not None:
            order = torch.rand(top_logp.shape, generator=torch.Generator().manual_seed(shuffle)).argsort(-1)
            top_logp, top_ids = top_logp.gather(-1, order), top_ids.gather(-1, order)
        native = prefix_search_on_host(FrameCandidates(top_logp, top_ids), lengths, beam)
        got = [t.cpu() for t in gpu_prefix_beam_search(top_logp.to(device), top_ids.to(device), lengths.to(device), beam,
                                                        kernel=kernel)]
        want = [torch.from_numpy(a) for a in (native.tokens, native.lengths, native.scores, native.count)]
        for name, g, w in zip(("tokens", "lengths", "scores", "count"), got, want):
            same = g.shape == w.shape and (torch.allclose(g, w, rtol=1e-12, atol=0) if name == "scores" else g.equal(w))
            if not same:
                differences.append(f"{case} beam={beam}: {name}")
    return differences


def test_gpu_prefix_search_is_identical_to_native_under_the_interpreter():
    pytest.importorskip("triton")
    assert under_triton_interpreter("t.gpu_search_differences('cpu')", "tests.test_search") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["triton", "cuda"])
def test_gpu_prefix_search_is_identical_to_native_on_the_gpu(kernel):
    pytest.importorskip("triton")
    assert gpu_search_differences("cuda", kernel, search_cases() + [long_case()]) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["triton", "cuda"])
def test_gpu_prefix_search_takes_candidates_in_any_order(kernel):
    """The CUDA kernel leaves keys out only in frames whose candidates come best first (the CTC head's order); in any
    other order it ranks them all, and both kernels give the native search's n-best for the same candidates."""
    pytest.importorskip("triton")
    assert gpu_search_differences("cuda", kernel, shuffle=11) == []


def test_cuda_build_without_nvcc_says_so(monkeypatch):
    """Without nvcc the CUDA search cannot be built, and says why (the GPU search then runs its Triton kernel)."""
    import runtime.native as native

    monkeypatch.setattr(native, "nvcc", lambda: None)
    native.load_cuda.cache_clear()
    try:
        with pytest.raises(native.NativeBuildError, match="no CUDA compiler"):
            native.load_cuda("prefix_beam_search_gpu", (9, 0))
    finally:
        native.load_cuda.cache_clear()


@pytest.mark.skipif(nvcc() is None, reason="needs nvcc (CUDA's compiler)")
def test_cuda_prefix_search_compiles():
    """The CUDA kernel builds for a Hopper GPU (run where one is: the test above)."""
    from runtime.native import load_cuda

    assert load_cuda("prefix_beam_search_gpu", (9, 0)).prefix_beam_search_max_beam() == 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prefix_search_compiles_once_for_every_frame_count():
    """A batch of a new length must not compile a new variant of the Triton kernel (~1 s) in the middle of a run."""
    pytest.importorskip("triton")
    from plugins.ctc_prefix_beam_search import _prefix_beam_search_kernel
    from plugins.ctc_prefix_beam_search import prefix_beam_search as gpu_prefix_beam_search

    counts = []
    for frames in (17, 16, 1, 32, 250):
        top = torch.log_softmax(torch.randn(2, frames, 30), -1).topk(4, -1)
        gpu_prefix_beam_search(top.values.cuda(), top.indices.cuda(), torch.tensor([frames, 1]).cuda(), 4,
                               kernel="triton")
        counts.append(compiled_variants(_prefix_beam_search_kernel))
    assert counts[1:] == counts[:1] * 4
