"""The native CTC prefix beam search against the Python one: identical n-best, scores and tie order."""

import pytest
import torch

from runtime.search import ctc_prefix_beam_search, prefix_beam_search


@pytest.mark.parametrize("quantize", [False, True])
def test_native_prefix_search_is_identical_to_python(quantize):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 60, 30, generator=g) * 3
    logits[..., 0] += 2.0  # blank-heavy, as CTC outputs are
    if quantize:  # coarse values create exact ties, to check the tie order
        logits = torch.round(logits)
    log_probs = torch.log_softmax(logits, -1)
    lengths = torch.tensor([60, 1, 33, 47, 8])
    for beam in (1, 4, 10):
        native = ctc_prefix_beam_search(log_probs, lengths, beam)
        top_logp, top_ids = log_probs.topk(beam, -1)
        for b, n in enumerate(lengths.tolist()):
            python = prefix_beam_search(top_logp[b, :n].tolist(), top_ids[b, :n].tolist(), beam, 0)
            assert native[b].nbest == python.nbest
            assert native[b].nbest_scores == python.nbest_scores  # bit for bit
