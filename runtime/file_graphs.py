"""A lone file's whole device work, wave to rescored n-best, as one CUDA graph per frame bucket.

Why: one file alone is latency, and each stage launched from Python (fbank, the encoder's graph, the prefix search,
the decoder's inputs and graph) left the GPU waiting for the host in between: for one 10 s file (u2++, fp16, H200)
the GPU worked 2.1 ms of a 4.2 ms call. Here the host launches one graph and waits once.

The graph holds, in order: the fbank kernels (``plugins.fbank``) writing the encoder's input, zero past the file's
frames; the compiled encoder network; the CTC prefix beam search (``plugins.ctc_prefix_beam_search``); the n-best as
chain tries (``plugins.chain_tries``) and the compiled rescoring decoder over them; the copies of what the host reads
into page-locked buffers. It is captured on first use per (frame bucket, sample dtype, beam, rescoring or not). The
chain tries have room for N hypotheses of half the encoder frames on average (``chain_room``), not of all of them:
the decoder runs every slot, and a CTC hypothesis of real speech is far shorter than its frames (a Mandarin character
spans several 40 ms frames). An n-best that does not fit is rescored by the staged path's decoder instead. The
networks run at the bucket's full length, masked by the file's own; the per-call values (frame count, CTC and reverse
weights) are copied into the graph's inputs before each replay. Greedy search, prefix beam search and attention
rescoring are served; the attention beam search (step by step, with host decisions) is not.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from core.compiled import capture_graph, pick_bucket
from core.dtype import fp32_exact
from layers.subsampling import subsampled_length
from plugins.chain_tries import chain_tries_fit
from plugins.ctc_prefix_beam_search import prefix_beam_search
from runtime.decoding import RescoringScores, WeNetDecoding
from runtime.frontend import FbankGraphs, num_frames
from runtime.search import NBEST_ARRAYS, DecodeResult, NBest, ctc_greedy_search
from runtime.session import EngineDir

SERVED_MODES = frozenset({"ctc_greedy_search", "ctc_prefix_beam_search", "attention_rescoring"})


class FileGraph(NamedTuple):
    graph: torch.cuda.CUDAGraph
    samples: torch.Tensor  # the bucket's samples, device
    frames: torch.Tensor  # the file's frame count, device (the fbank kernels' table row)
    weights: torch.Tensor  # (2,) fp32: ctc weight, reverse weight, device
    host: dict[str, torch.Tensor]  # what the graph copies back, page-locked
    encoder: dict[str, torch.Tensor]  # the encoder's outputs, device (the staged rescoring's inputs)
    slots: int  # the chain tries' size


class FileGraphs:
    """The graphs of one engine dir's compiled networks on a GPU, captured as files need them."""

    def __init__(self, engine: EngineDir, decoding: WeNetDecoding, fbank: FbankGraphs):
        """``fbank``: the lone file's graphed fbank of the staged path, whose frame buckets and kernels these graphs
        share."""
        self.engine, self.decoding, self.fbank, self.model = engine, decoding, fbank, engine.model
        self.encoder = engine.sessions["encoder"].capturable
        self.pool = torch.cuda.graph_pool_handle()  # one file at a time: every bucket's graph shares the memory
        self.graphs: dict[tuple, FileGraph] = {}
        self.staged_frames = torch.zeros(1, dtype=torch.int64, pin_memory=True)
        self.staged_weights = torch.zeros(2, dtype=torch.float32, pin_memory=True)
        # a hypothesis' slots in the chain tries, on average, as a fraction of the encoder frames. H200, u2++ fp16,
        # one 10 s file (123 tokens a hypothesis): 0.5 against 1.0: 2.75-2.96 against 2.89-3.07 ms
        self.chain_room = 0.5
        self.restaged = 0  # files whose n-best did not fit the chains, rescored by the staged path

    def serves(self, modes: list[str], beam_size: int) -> bool:
        """Whether these graphs can decode a file in every one of ``modes`` with this beam."""
        return set(modes) <= SERVED_MODES and self.encoder is not None and self.decoding.on_device is not None and (
            beam_size <= self.decoding.beam_limit)

    def __call__(self, wave: torch.Tensor, modes: list[str], beam_size: int, ctc_weight: float,
                 reverse_weight: float) -> dict[str, DecodeResult]:
        """Each of ``modes``' result for one file's samples (on the device or in page-locked host memory; at most the
        largest bucket's frames)."""
        frames = num_frames(wave.numel(), self.fbank.length, self.fbank.shift)
        rescoring = "attention_rescoring" in modes
        key = (pick_bucket(self.fbank.buckets, frames), wave.dtype, beam_size, rescoring, self.chain_room)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(*key)
        entry.samples[:wave.numel()].copy_(wave, non_blocking=True)
        self.staged_frames[0] = frames
        self.staged_weights[0], self.staged_weights[1] = ctc_weight, reverse_weight
        entry.frames.copy_(self.staged_frames, non_blocking=True)
        entry.weights.copy_(self.staged_weights, non_blocking=True)
        entry.graph.replay()
        done = torch.cuda.Event()
        done.record()
        done.synchronize()  # the staging buffers are free again, and the results are on the host
        host = entry.host
        out: dict[str, DecodeResult] = {}
        if "ctc_greedy_search" in modes:
            lens = torch.tensor([subsampled_length(frames, self.model.encoder.input_layer)], dtype=torch.int32)
            out["ctc_greedy_search"] = ctc_greedy_search(host["top_log_prob"], host["top_label"], lens,
                                                         self.model.blank_id)[0]
        # copies: the results outlive the buffers, which the next call overwrites
        nbest = NBest(*(host[name].numpy().copy() for name in NBEST_ARRAYS))
        if "ctc_prefix_beam_search" in modes:
            out["ctc_prefix_beam_search"] = nbest.results()[0]
        if rescoring and chain_tries_fit(nbest.lengths, nbest.count, entry.slots):
            out["attention_rescoring"] = RescoringScores(nbest, host["rescored"].clone(), None).results()[0]
        elif rescoring:
            self.restaged += 1
            out["attention_rescoring"] = self.decoding.rescore(nbest, entry.encoder["encoder_out"],
                                                               entry.encoder["encoder_out_lens"], ctc_weight,
                                                               reverse_weight)[0]
        return out

    def _capture(self, frames: int, dtype: torch.dtype, beam_size: int, rescoring: bool,
                 chain_room: float) -> FileGraph:
        device = self.engine.device
        samples = self.fbank.samples(frames, dtype)
        table = self.fbank.table(frames)  # row 1, the frame count, is the file's at each replay
        weights = torch.zeros(2, dtype=torch.float32, device=device)
        host: dict[str, torch.Tensor] = {}
        encoder: dict[str, torch.Tensor] = {}
        encoder_frames = subsampled_length(frames, self.model.encoder.input_layer)
        slots = 1 + beam_size * (int(encoder_frames * chain_room) + 1)

        def run() -> None:
            feats = self.fbank.log_mel(samples, table, frames)
            enc = self.encoder({"speech": feats, "speech_lengths": table[1].to(torch.int32)})
            encoder.update(enc)
            top_log_probs, top_labels = enc["ctc_top_log_probs"], enc["ctc_top_labels"]
            nbest = prefix_beam_search(top_log_probs[..., :beam_size].contiguous(),
                                       top_labels[..., :beam_size].contiguous(), enc["encoder_out_lens"], beam_size,
                                       self.model.blank_id)
            back = {"top_log_prob": top_log_probs[..., :1], "top_label": top_labels[..., :1],
                    **dict(zip(NBEST_ARRAYS, nbest))}
            if rescoring:
                back["rescored"] = self.decoding.chain_scores(nbest, enc["encoder_out"], enc["encoder_out_lens"],
                                                              weights, slots)
            for name, value in back.items():
                if name not in host:
                    host[name] = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                host[name].copy_(value, non_blocking=True)

        with fp32_exact():
            graph, _ = capture_graph(run, device, self.pool)
        return FileGraph(graph, samples, table[1], weights, host, encoder, slots)

