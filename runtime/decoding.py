"""``WeNetDecoding``: attention rescoring and attention beam search over the decoder networks.

The cross-attention K/V are computed once per utterance and shared by all of its hypotheses: inside
the ``decoder`` and ``r_decoder`` networks for rescoring (all hypotheses of all utterances of a batch in
one call per direction, as tries: a prefix the hypotheses share is decoded once, ``runtime.trie``; the
two directions side by side on two streams), by the ``cross_kv`` network for the step-by-step
attention beam search.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from core.compiled import capture_graph, pick_bucket
from core.dtype import fp32_exact
from models.wenet.networks import PACKED_TRIE_INPUTS
from plugins.chain_tries import chain_slots, chain_tries
from plugins.gather_inputs import InputTable
from runtime.encoding import EncoderOutput
from runtime.search import NBEST_ARRAYS, DecodeResult, NBest, NBestResult
from runtime.session import EngineDir, Session, copy_to_host, side_by_side
from runtime.trie import PackedTries, packed_tries

DeviceNBest = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # ``NBest``'s arrays on a GPU


class RescoringScores(NamedTuple):
    """A queued rescoring: the n-best, and its scores (B, N) on the host once ``ready`` (a CUDA event) has passed."""

    nbest: NBest
    scores: torch.Tensor
    ready: torch.cuda.Event | None
    reads: tuple[torch.Tensor, ...] = ()  # device inputs the queued work reads, held until then

    def results(self) -> list[DecodeResult]:
        """Each utterance's hypotheses ranked by their rescored scores (waits for them)."""
        if self.ready is not None:
            self.ready.synchronize()
        out = []
        for b, (row, count) in enumerate(zip(self.scores.tolist(), self.nbest.count.tolist())):
            # stable: among equal scores the earlier hypothesis first, so order[0] is WeNet's best (its strict '>').
            # Python lists: rows of a few hypotheses, where numpy's calls cost more than their work (batch 1 on the
            # development machine's CPU: 2.5 against 7 us; as fast at batch 64)
            order = sorted(range(count), key=lambda r: -row[r])
            out.append(NBestResult(self.nbest, b, order, [row[r] for r in order]))
        return out


class WeNetDecoding:
    def __init__(self, engine: EngineDir):
        self.engine = engine
        self.model = engine.model
        sessions = engine.sessions
        self.cross_kv_session = sessions["cross_kv"]
        # rescoring: each direction's share of the scores, left (with the CTC's) and right (bidirectional models)
        self.decoders: list[Session] = [sessions[name] for name in ("decoder", "r_decoder") if name in sessions]
        self.step = sessions["decoder_step"]
        self.beam_limit = self.decoders[0].profile("hyps").max
        self.bidirectional = len(self.decoders) == 2
        # the right decoder's stream, owned here: one that other threads queue work on could join a capture
        self.side_stream = torch.cuda.Stream(engine.device) if self.bidirectional and engine.device.type == "cuda" \
            else None

    def cross_kv(self, enc: EncoderOutput) -> dict[str, torch.Tensor]:
        return self.cross_kv_session.run({"encoder_out": enc.encoder_out})

    def check_beam(self, beam_size: int) -> None:
        if not 1 <= beam_size <= self.beam_limit:
            raise ValueError(f"beam size {beam_size} is outside the built engines' [1, {self.beam_limit}]; "
                             "rebuild with a larger --beam_size")

    def rescore(self, nbest: NBest, encoder_out: torch.Tensor, encoder_lens: torch.Tensor,
                ctc_weight: float, reverse_weight: float) -> list[DecodeResult]:
        """WeNet's attention_rescoring: best of each utterance's CTC n-best under
        (1 - rw) * left + rw * right + ctc_weight * ctc (scores include the final eos)."""
        return self.launch_rescoring(nbest, self.rescoring_inputs(nbest, ctc_weight, reverse_weight), encoder_out,
                                     encoder_lens).results()

    def rescoring_inputs(self, nbest: NBest, ctc_weight: float, reverse_weight: float) -> dict[str, torch.Tensor]:
        """The decoders' host inputs for an n-best: its tries both ways (``runtime.trie``), each hypothesis' path
        and step count, CTC scores and the weights. Host work only, so a search thread can make them."""
        n = int(nbest.count.max())
        self.check_beam(n)
        lengths = np.where(np.arange(n) < nbest.count[:, None], nbest.lengths[:, :n], -1)  # absent hypotheses: 0 steps
        tries = [PackedTries(*map(torch.from_numpy, packed_tries(nbest.tokens[:, :n], nbest.lengths[:, :n], nbest.count,
                                                                 self.model.sos, self.model.eos, reverse)))
                 for reverse in (False, True)[:1 + self.bidirectional]]
        return self.decoder_inputs(torch.from_numpy((lengths + 1).astype(np.int32)),
                                   torch.from_numpy(np.where(lengths >= 0, nbest.scores[:, :n], 0.0).astype(np.float32)),
                                   tries, torch.tensor([ctc_weight]), torch.tensor([reverse_weight]))

    def decoder_inputs(self, hyps_lens_sos: torch.Tensor, ctc_scores: torch.Tensor, tries: list[PackedTries],
                       ctc_weight: torch.Tensor, reverse_weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoder networks' inputs by name (each takes those it names), from each hypothesis' step count (B, N)
        and CTC score (B, N), the tries of each direction (left, then right) with their paths, and the weights (1,)."""
        inputs = {"hyps_lens_sos": hyps_lens_sos, "ctc_scores": ctc_scores, "ctc_weight": ctc_weight}
        for prefix, packed in zip(("", "r_"), tries):
            inputs.update({f"{prefix}trie_{name}": getattr(packed, name)
                           for name in (*PACKED_TRIE_INPUTS, "ends", "starts")})
            inputs[f"{prefix}hyps_path"] = packed.paths
        inputs["reverse_weight"] = reverse_weight
        return inputs

    def decoders_scores(self, inputs: dict[str, torch.Tensor], captured: bool = False) -> torch.Tensor:
        """The rescored scores (B, N) fp32: the sum of each direction's share, the two run side by side, through the
        sessions (``run``), or through the compiled networks themselves (``captured``: inside a caller's CUDA graph)."""
        calls = [functools.partial(session.capturable if captured else session.run,
                                   {name: inputs[name] for name in session.inputs}) for session in self.decoders]
        left, *right = (out["scores"].float() for out in side_by_side(calls, self.side_stream))
        return left + right[0] if right else left

    def chain_scores(self, nbest: DeviceNBest, encoder_out: torch.Tensor, encoder_lens: torch.Tensor,
                     weights: torch.Tensor, slots: int) -> torch.Tensor:
        """Device work only, which a CUDA graph can hold: the rescored scores (B, N) fp32 of an n-best on the GPU,
        each hypothesis a chain of its utterance's trie of ``slots`` nodes (``plugins.chain_tries``; the chains must
        fit), through the compiled decoders' ``capturable``. ``weights`` (2,) fp32 on the GPU: the CTC and the reverse
        weight."""
        tokens, lengths, scores, count = nbest
        tries = [chain_tries(tokens, lengths, count, self.model.sos, self.model.eos, reverse, slots)
                 for reverse in (False, True)[:1 + self.bidirectional]]
        inputs = self.decoder_inputs((lengths + 1).int(), scores.float(), tries, weights[:1], weights[1:])
        return self.decoders_scores({**inputs, "encoder_out": encoder_out, "encoder_out_lens": encoder_lens},
                                    captured=True)

    @functools.cached_property
    def on_device(self) -> DeviceRescoring | None:
        """The rescoring of an n-best that is on the GPU (compiled engines there; else None)."""
        return DeviceRescoring(self) if self.decoders[0].capturable is not None else None

    def launch_rescoring(self, nbest: NBest, inputs: dict[str, torch.Tensor], encoder_out: torch.Tensor,
                         encoder_lens: torch.Tensor) -> RescoringScores:
        """``rescore`` from ``rescoring_inputs``: one call per decoder, queued; the scores come back without waiting."""
        scores = self.decoders_scores({**inputs, "encoder_out": encoder_out, "encoder_out_lens": encoder_lens})
        (host,), ready = copy_to_host(scores)
        return RescoringScores(nbest, host, ready)

    def attention_beam_search(self, enc: EncoderOutput, kv: dict[str, torch.Tensor],
                              beam_size: int) -> list[DecodeResult]:
        """WeNet's attention beam search, batched; each utterance stops at its own length or when
        all its beams have ended, so its result does not depend on the rest of the batch."""
        self.check_beam(beam_size)
        sos, eos, device = self.model.sos, self.model.eos, self.engine.device
        batch, n = enc.encoder_lens.shape[0], beam_size
        running = batch * n
        max_steps = enc.encoder_lens.cpu().long()
        layers = sum(1 for k in self.step.inputs if k.startswith("cache.") and k.endswith(".key"))
        cache_shape = self.step.inputs["cache.0.key"].dims
        heads, d_k = cache_shape[1], cache_shape[3]
        empty = torch.zeros(running, heads, 0, d_k, dtype=self.step.inputs["cache.0.key"].dtype.torch, device=device)
        cache = {f"cache.{i}.{kind}": empty for i in range(layers) for kind in ("key", "value")}
        memory = {k: v for k, v in kv.items() if k in self.step.inputs}
        hyps = torch.full((running, 1), sos, dtype=torch.long)
        scores = torch.tensor([0.0] + [-float("inf")] * (n - 1)).repeat(batch)  # (B*N,)
        ended = torch.zeros(running, dtype=torch.bool)
        base = torch.arange(batch).repeat_interleave(n) * n  # first beam of each row's utterance
        for step in range(1, int(max_steps.max()) + 1):
            active = (step <= max_steps) & ~ended.view(batch, n).all(1)
            if not active.any():
                break
            out = self.step.run({"tokens": hyps[:, -1:].to(torch.int32).to(device),
                                 "encoder_out_lens": enc.encoder_lens, **memory, **cache})
            top_logp, top_ids = out["top_log_probs"][:, :n].cpu(), out["top_labels"][:, :n].long().cpu()  # (B*N, N)
            # an ended beam continues only with eos at no cost
            top_logp = torch.where(ended[:, None], torch.tensor([0.0] + [-float("inf")] * (n - 1)), top_logp)
            top_ids = torch.where(ended[:, None], eos, top_ids)
            candidates, offset = (scores.unsqueeze(1) + top_logp).view(batch, n * n).topk(n)
            source = base + (offset // n).view(-1)  # beam each new beam extends
            token = top_ids.view(-1).index_select(0, base * n + offset.view(-1))
            keep = ~active.repeat_interleave(n)  # finished utterances stay as they are
            source[keep] = torch.arange(running)[keep]
            token[keep] = eos
            scores = torch.where(keep, scores, candidates.view(-1))
            hyps = torch.cat([hyps.index_select(0, source), token.view(-1, 1)], 1)
            ended = hyps[:, -1] == eos
            index = source.to(device)
            cache = {name.replace("new_cache", "cache"): value.index_select(0, index)
                     for name, value in out.items() if name.startswith("new_cache.")}
        results = []
        for b in range(batch):
            utterance = scores[b * n:(b + 1) * n]
            order = utterance.argsort(descending=True, stable=True).tolist()
            tokens = [[t for t in hyps[b * n + k, 1:].tolist() if t != eos] for k in range(n)]
            best = int(utterance.argmax())
            results.append(DecodeResult(tokens[best], float(utterance[best]), [tokens[k] for k in order],
                                        [float(utterance[k]) for k in order]))
        return results


class CapturedRescoring:
    """One shape's captured rescoring (``DeviceRescoring``): the graph's static inputs and the table it gathers them
    through (``plugins.gather_inputs``), and once captured the graph and its scores."""

    def __init__(self, static: dict[str, torch.Tensor]):
        self.static = static
        self.table = InputTable(static)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.scores: torch.Tensor | None = None


class DeviceRescoring:
    """``WeNetDecoding.rescore`` of an n-best that is still on the GPU (the prefix search's): its chain tries and the
    compiled decoders as one CUDA graph per shape (batch, encoder frames bucket, trie size bucket), captured on first
    use.

    Why: from the host, a batch's rescoring builds the tries there and stages the decoders' inputs, ~0.5 ms of host
    work at batch 1 (H200 machine) in which the GPU idles unless other batches have work queued. So this serves a
    batch decoded alone; the overlapped batches of the throughput path keep the host's tries, which share prefixes
    (chains do not, so the decoder runs more rows over them). The graph gathers its inputs from where they lie through
    a table of their addresses (``plugins.gather_inputs``): six copies queued from Python took ~45 us of host at batch
    1, writing the table ~13."""

    def __init__(self, decoding: WeNetDecoding):
        engine = decoding.engine
        self.decoding, self.device = decoding, engine.device
        self.frames, self.nodes = engine.buckets["encoder_frames"], engine.buckets["trie_nodes"]
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, CapturedRescoring] = {}
        self.weights: dict[tuple[float, float], torch.Tensor] = {}

    def __call__(self, nbest: NBest, on_device: DeviceNBest, encoder_out: torch.Tensor, encoder_lens: torch.Tensor,
                 ctc_weight: float, reverse_weight: float) -> RescoringScores:
        """Queued: the rescored scores of ``nbest``, whose arrays ``on_device`` holds on the GPU (the host copy gives
        the tries' size), over the encoder output (B, T', D) and lengths (B,)."""
        slots = pick_bucket(self.nodes, chain_slots(nbest.lengths, nbest.count))
        weights = self.weights.get((ctc_weight, reverse_weight))
        if weights is None:
            weights = self.weights[ctc_weight, reverse_weight] = torch.tensor([ctc_weight, reverse_weight],
                                                                             device=self.device)
        batch, frames = encoder_out.shape[:2]
        width = pick_bucket(self.frames, max(frames, on_device[0].shape[2]))
        key = (batch, on_device[0].shape[1], width, encoder_out.dtype, slots)
        inputs = dict(zip(NBEST_ARRAYS, on_device), encoder_out=encoder_out, encoder_lens=encoder_lens,
                      weights=weights)
        captured = self.graphs.get(key)
        if captured is None:
            captured, reads = self._capture(inputs, width, slots)
            self.graphs[key] = captured
        else:
            reads = captured.table.write(inputs)
        captured.graph.replay()
        (host,), ready = copy_to_host(captured.scores)
        captured.table.read = ready
        # what the graph reads where it lies (the n-best made on the search's stream): held until the scores are read,
        # so that its memory is not reused before the graph has run
        return RescoringScores(nbest, host, ready, tuple(reads))

    def _capture(self, inputs: dict[str, torch.Tensor], width: int,
                 slots: int) -> tuple[CapturedRescoring, list[torch.Tensor]]:
        """The graph for ``inputs``' shape, the tokens' and encoder frames padded to ``width``, tries of ``slots``
        nodes, with its table written for ``inputs`` (its first run, outside the capture, reads them too); and what
        the table's gather reads (``InputTable.write``). A call writes the leading corner of each input buffer; what
        lies past it (zeros, or an earlier call's frames) is never read: tokens past a hypothesis' length, keys past
        the encoder lengths."""
        batch, n = inputs["tokens"].shape[:2]
        shapes = {"tokens": (batch, n, width), "encoder_out": (batch, width, inputs["encoder_out"].shape[2])}
        static = {name: torch.zeros(shapes.get(name, t.shape), device=self.device,
                                    dtype=torch.int32 if name == "encoder_lens" else t.dtype)
                  for name, t in inputs.items()}
        captured = CapturedRescoring(static)
        reads = captured.table.write(inputs)

        def run() -> torch.Tensor:
            captured.table.gather()
            return self.decoding.chain_scores(tuple(static[name] for name in NBEST_ARRAYS), static["encoder_out"],
                                              static["encoder_lens"], static["weights"], slots)

        with fp32_exact():
            captured.graph, captured.scores = capture_graph(run, self.device, self.pool)
        return captured, reads
