"""Compare built engines with ``reference.py`` (each utterance alone, as batch 1) on given features."""

from __future__ import annotations

import torch

from models.wenet.reference import ReferenceModel
from runtime.transcriber import MODES, DecodingOptions, Transcriber
from weights.files import read_model_dir

TOL = 1e-4


def load_reference(model_dir: str) -> ReferenceModel:
    ckpt = read_model_dir(model_dir)
    model = ReferenceModel(ckpt.config)
    model.load_checkpoint(ckpt.state, ckpt.cmvn)
    return model


def assert_nbest_equal(ours, ref, tol: float = TOL, score_tol: float = 1e-3) -> None:
    """Same hypotheses; order may differ only between near-ties (< ``tol``). Scores sum float32
    log-probs over hundreds of frames, so each may drift by ~1e-4 from the reference's."""
    assert sorted(map(tuple, ours.nbest)) == sorted(map(tuple, ref.nbest))
    ref_score = {tuple(h): s for h, s in zip(ref.nbest, ref.nbest_scores)}
    ref_rank = {tuple(h): i for i, h in enumerate(ref.nbest)}
    for i, (h, s) in enumerate(zip(ours.nbest, ours.nbest_scores)):
        assert abs(s - ref_score[tuple(h)]) < score_tol
        for h2, s2 in zip(ours.nbest[i + 1:], ours.nbest_scores[i + 1:]):
            if ref_rank[tuple(h2)] < ref_rank[tuple(h)]:
                assert abs(s - s2) < tol, "n-best order differs beyond a near-tie"


def assert_top_k_of(top_logp: torch.Tensor, top_labels: torch.Tensor, log_probs: torch.Tensor, tol: float) -> None:
    """(…, k) top log-probs and labels are a top k of full (…, V) ``log_probs`` up to ``tol``: each value is the
    log-prob of its label, labels are distinct, values descend, and no other label beats the k-th (ties in any
    order)."""
    top_labels = top_labels.long()
    assert (log_probs.gather(-1, top_labels) - top_logp).abs().max() < tol
    assert (top_labels.sort(-1).values.diff(dim=-1) > 0).all()
    assert (top_logp.diff(dim=-1) <= tol).all()
    kth = log_probs.topk(top_logp.shape[-1], -1).values[..., -1]
    assert (top_logp[..., -1] >= kth - tol).all()


def assert_same_top_k(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor],
                      tol: float) -> None:
    """Two (values, labels) top k of the same log-probs up to ``tol``: labels may differ only among near-tied
    values."""
    torch.testing.assert_close(got[0], want[0], atol=tol, rtol=tol)
    values = want[0]
    near = torch.zeros_like(values, dtype=torch.bool)
    near[..., 1:] |= values[..., :-1] - values[..., 1:] < 2 * tol
    near[..., :-1] |= values[..., :-1] - values[..., 1:] < 2 * tol
    assert ((got[1] == want[1]) | near).all()


def check_engine_against_reference(model_dir: str, engine_dir: str, feats: list[torch.Tensor],
                                   beam_size: int = 10, ctc_weight: float = 0.5, reverse_weight: float = 0.3) -> None:
    reference = load_reference(model_dir)
    transcriber = Transcriber(engine_dir)
    modes = list(MODES)
    options = DecodingOptions(modes, beam_size, ctc_weight, reverse_weight, batch_size=len(feats))
    enc = transcriber.encoding.encode(feats)  # every utterance in one padded batch
    ours = transcriber.decode(feats, options)
    for i, f in enumerate(feats):
        lengths = torch.tensor([f.shape[0]])
        encoder_out, lens, log_probs, _ = reference.encode(f[None], lengths)
        n = int(lens[0])
        assert int(enc.encoder_lens[i]) == n
        assert (enc.encoder_out[i, :n].float() - encoder_out[0]).abs().max() < TOL
        assert_top_k_of(enc.ctc_top_log_probs[i, :n], enc.ctc_top_labels[i, :n], log_probs[0], TOL)
        ref = reference.decode(modes, f[None], lengths, beam_size, ctc_weight, reverse_weight)
        assert ours["ctc_greedy_search"][i].tokens == ref["ctc_greedy_search"][0].tokens
        assert_nbest_equal(ours["ctc_prefix_beam_search"][i], ref["ctc_prefix_beam_search"][0])
        assert ours["attention_rescoring"][i].tokens == ref["attention_rescoring"][0].tokens
        ref_scores = dict(zip(map(tuple, ref["attention_rescoring"][0].nbest), ref["attention_rescoring"][0].nbest_scores))
        ours_scores = dict(zip(map(tuple, ours["attention_rescoring"][i].nbest),
                               ours["attention_rescoring"][i].nbest_scores))
        assert ours_scores.keys() == ref_scores.keys()  # every hypothesis rescored, not only the best
        assert max(abs(ours_scores[h] - ref_scores[h]) for h in ref_scores) < 1e-3
        assert ours["attention"][i].tokens == ref["attention"][0].tokens
        assert abs(ours["attention"][i].score - ref["attention"][0].score) < 1e-3


def check_batch_independence(engine_dir: str, feats: list[torch.Tensor], beam_size: int = 4) -> None:
    """Every utterance gets the same result alone, in a batch, and in a batch of another order."""
    transcriber = Transcriber(engine_dir)
    options = DecodingOptions(list(MODES), beam_size, 0.5, 0.3, batch_size=len(feats))
    together = transcriber.decode(feats, options)
    reordered = transcriber.decode(feats[::-1], options)
    for i, f in enumerate(feats):
        alone = transcriber.decode([f], options)
        for mode in MODES:
            assert together[mode][i].tokens == alone[mode][0].tokens == reordered[mode][len(feats) - 1 - i].tokens
