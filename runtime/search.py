"""CTC searches over the encoder's log-probs, with WeNet's semantics (blank 0, beam, tie order)."""

from __future__ import annotations

import ctypes
import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from plugins import ctc_prefix_beam_search as gpu_search
from plugins import runs_on_gpu
from runtime.native import NativeBuildError, pointer, usable_cpus
from runtime.native import load as load_native
from runtime.session import copy_to_host

NEG_INF = -float("inf")
THREADS = usable_cpus()  # utterances searched at once by the native search (it releases the GIL)


@dataclass
class DecodeResult:
    """As WeNet's: best tokens and score, and the n-best with their scores."""

    tokens: list[int]
    score: float = 0.0
    nbest: list[list[int]] = field(default_factory=list)
    nbest_scores: list[float] = field(default_factory=list)


NBEST_ARRAYS = ("tokens", "lengths", "scores", "count")  # ``NBest``'s fields, in order


@dataclass
class NBest:
    """A batch's CTC n-best as arrays, as the native search writes them and the rescoring reads them: hypothesis r
    of utterance b is ``tokens[b, r, :lengths[b, r]]`` for r < ``count[b]``, best first. Lists of Python ints are
    made only for what a caller reads (a 300-token n-best of 64 utterances is ~20 ms of lists, under the GIL)."""

    tokens: np.ndarray  # (B, N, T) int32
    lengths: np.ndarray  # (B, N) int64
    scores: np.ndarray  # (B, N) float64
    count: np.ndarray  # (B,) int64

    @classmethod
    def from_results(cls, results: list[DecodeResult]) -> NBest:
        n = max(len(r.nbest) for r in results)
        frames = max((len(h) for r in results for h in r.nbest), default=0)
        tokens = np.zeros((len(results), n, max(frames, 1)), dtype=np.int32)
        lengths, scores = np.zeros((len(results), n), dtype=np.int64), np.zeros((len(results), n))
        for b, r in enumerate(results):
            for i, (h, score) in enumerate(zip(r.nbest, r.nbest_scores)):
                tokens[b, i, :len(h)], lengths[b, i], scores[b, i] = h, len(h), score
        return cls(tokens, lengths, scores, np.array([len(r.nbest) for r in results], dtype=np.int64))

    def hypothesis(self, b: int, r: int) -> list[int]:
        return self.tokens[b, r, :self.lengths[b, r]].tolist()

    def results(self) -> list[DecodeResult]:
        return [NBestResult(self, b, list(range(n)), self.scores[b, :n].tolist())
                for b, n in enumerate(self.count.tolist())]


class NBestResult(DecodeResult):
    """One utterance of an ``NBest`` in the order ``order`` with ``scores``; its hypotheses other than the best
    become lists on first use (most callers read only the best)."""

    def __init__(self, source: NBest, b: int, order: list[int], scores: list[float]):
        self._source, self._b, self._order = source, b, order
        self.tokens = source.hypothesis(b, order[0])
        self.score = scores[0]
        self.nbest_scores = scores

    @functools.cached_property
    def nbest(self) -> list[list[int]]:
        return [self.tokens] + [self._source.hypothesis(self._b, r) for r in self._order[1:]]


def ctc_greedy_search(top_log_probs: torch.Tensor, top_labels: torch.Tensor, lengths: torch.Tensor,
                      blank: int = 0) -> list[DecodeResult]:
    """Best label per frame (the first of each frame's top-k (B, T, k), best first), runs collapsed, blanks dropped;
    score = the best path's log-prob."""
    best_logp, best = top_log_probs[..., 0].cpu(), top_labels[..., 0].cpu()  # only the best path moves
    results = []
    for b, length in enumerate(lengths.tolist()):
        path = best[b, :length]
        keep = torch.ones_like(path, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]
        tokens = path[keep & (path != blank)].tolist()
        score = float(best_logp[b, :length].sum())
        results.append(DecodeResult(tokens, score, [tokens], [score]))
    return results


def _log_add(a: float, b: float) -> float:
    if a == NEG_INF and b == NEG_INF:
        return NEG_INF
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def prefix_beam_search(top_logp: list[list[float]], top_ids: list[list[int]], beam_size: int,
                       blank: int) -> DecodeResult:
    """One utterance, given each frame's top-``beam_size`` (log-prob, label) pairs.

    A prefix carries two log-scores: paths ending in blank (s) and in its last label (ns).
    Candidates are visited in top-k order and prefixes in beam order, so ties keep WeNet's
    insertion order under the stable sort.
    """
    beam: list[tuple[tuple[int, ...], float, float]] = [((), 0.0, NEG_INF)]
    for frame_logp, frame_ids in zip(top_logp, top_ids):
        scores: dict[tuple[int, ...], list[float]] = {}
        for label, p in zip(frame_ids, frame_logp):
            for prefix, s, ns in beam:
                total = _log_add(s, ns)
                if label == blank:
                    entry = scores.setdefault(prefix, [NEG_INF, NEG_INF])
                    entry[0] = _log_add(entry[0], total + p)
                    continue
                extended = scores.setdefault(prefix + (label,), [NEG_INF, NEG_INF]) if not (
                    prefix and prefix[-1] == label) else None
                if extended is not None:
                    extended[1] = _log_add(extended[1], total + p)
                else:  # repeated label: stays collapsed unless a blank separated it
                    same = scores.setdefault(prefix, [NEG_INF, NEG_INF])
                    same[1] = _log_add(same[1], ns + p)
                    grown = scores.setdefault(prefix + (label,), [NEG_INF, NEG_INF])
                    grown[1] = _log_add(grown[1], s + p)
        ranked = sorted(scores.items(), key=lambda kv: _log_add(*kv[1]), reverse=True)[:beam_size]
        beam = [(prefix, s, ns) for prefix, (s, ns) in ranked]
    nbest = [list(prefix) for prefix, _, _ in beam]
    nbest_scores = [_log_add(s, ns) for _, s, ns in beam]
    return DecodeResult(nbest[0], nbest_scores[0], nbest, nbest_scores)


def ctc_prefix_beam_search(log_probs: torch.Tensor, lengths: torch.Tensor, beam_size: int,
                           blank: int = 0) -> list[DecodeResult]:
    """A batch of full log-probs (B, T, V) (a reference model's) through the native search (same arithmetic and tie
    order as ``prefix_beam_search``), or through ``prefix_beam_search`` where no C++ compiler is available."""
    return prefix_search_on_host(frame_candidates(log_probs, beam_size), lengths, beam_size, blank).results()


class FrameCandidates(NamedTuple):
    """Each frame's top ``beam_size`` (log-probs, labels): all the prefix search reads. Host tensors; from a GPU
    they are being copied until ``ready`` (a CUDA event) has passed: ``wait`` first."""

    top_logp: torch.Tensor  # (B, T, k) float32
    top_labels: torch.Tensor  # (B, T, k) int32
    ready: torch.cuda.Event | None = None

    def wait(self) -> FrameCandidates:
        if self.ready is not None:
            self.ready.synchronize()
        return self


def frame_candidates(log_probs: torch.Tensor, beam_size: int) -> FrameCandidates:
    """Each frame's top ``beam_size`` of full log-probs (B, T, V), taken where they are."""
    top_logp, top_ids = log_probs.float().topk(beam_size, dim=-1)
    return host_candidates(top_logp, top_ids.int())


def host_candidates(top_logp: torch.Tensor, top_labels: torch.Tensor) -> FrameCandidates:
    """Frame candidates on the host; from a GPU into page-locked memory, without waiting for the copy (nor for the
    work queued before it)."""
    host, ready = copy_to_host(top_logp.contiguous(), top_labels.contiguous())
    return FrameCandidates(*host, ready)


class PendingNBest:
    """A batch's CTC prefix beam search, started: ``result()`` gives its ``NBest``. On a GPU (with Triton) the search
    runs there, queued behind the encoder, and only its n-best is copied back without waiting; elsewhere the top-k
    candidates are copied back and ``result()`` runs the native search (host work that releases the GIL).
    ``on_device``: the GPU search's n-best, which stays there (``NBest``'s arrays; None elsewhere)."""

    def __init__(self, top_logp: torch.Tensor, top_labels: torch.Tensor, lengths: torch.Tensor, beam_size: int,
                 blank: int = 0, stream: torch.cuda.Stream | None = None):
        """Each frame's top k >= ``beam_size`` (log-probs, labels) (B, T, k), best first, and ``lengths`` (B,), on one
        device (the GPU search reads them there). ``stream``: where the GPU search runs, after the work queued so far
        on the current stream: its one program per utterance leaves most of the GPU idle, so on a stream of its own it
        overlaps the next batches' work."""
        self.beam_size, self.blank = beam_size, blank
        # the widest beam's candidates, the first beam_size of them (they are ordered best first)
        top_logp, top_labels = top_logp[..., :beam_size], top_labels[..., :beam_size]
        if runs_on_gpu(top_logp.device):
            device = top_logp.device
            # owned copies, made on the current stream: a CUDA graph's output buffers are overwritten by its next
            # replay, which may run before the search, on its own stream, has read them (``contiguous`` alone would
            # return the buffer itself when the beam is the widest built)
            top_logp, top_labels, lengths = (t.clone(memory_format=torch.contiguous_format)
                                             for t in (top_logp, top_labels, lengths))
            stream = stream or torch.cuda.current_stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for t in (top_logp, top_labels, lengths):
                    t.record_stream(stream)  # their memory is not reused before the search has read them
                self.on_device = gpu_search.prefix_beam_search(top_logp, top_labels, lengths, beam_size, blank)
                self.host, self.ready = copy_to_host(*self.on_device)
            self.candidates = None
        else:
            self.candidates, self.lengths = host_candidates(top_logp, top_labels), lengths
            self.on_device = None

    def result(self) -> NBest:
        if self.candidates is not None:
            return prefix_search_on_host(self.candidates, self.lengths, self.beam_size, self.blank)
        self.ready.synchronize()
        return NBest(*(t.numpy() for t in self.host))


def prefix_search_on_host(candidates: FrameCandidates, lengths: torch.Tensor, beam_size: int,
                          blank: int = 0) -> NBest:
    """``ctc_prefix_beam_search`` from ``frame_candidates``: host work only (the native search releases the GIL)."""
    top_logp, top_labels, _ = candidates.wait()
    lengths = lengths.cpu().long()
    try:
        search = _native_search()
    except NativeBuildError as e:
        _warn_once(f"native CTC prefix beam search unavailable ({e}); using the Python one")
        return NBest.from_results([prefix_beam_search(top_logp[b, :n].tolist(), top_labels[b, :n].tolist(),
                                                      beam_size, blank) for b, n in enumerate(lengths.tolist())])
    batch, frames, k = top_logp.shape
    tokens = np.zeros((batch, beam_size, frames), dtype=np.int32)
    token_lengths = np.zeros((batch, beam_size), dtype=np.int64)
    scores = np.zeros((batch, beam_size), dtype=np.float64)
    count = np.zeros(batch, dtype=np.int64)
    top_logp, top_labels, lengths = top_logp.contiguous(), top_labels.contiguous(), lengths.contiguous()
    search(pointer(top_logp), pointer(top_labels), pointer(lengths), batch, frames, k, beam_size, blank, THREADS,
           *(a.ctypes.data_as(ctypes.c_void_p) for a in (tokens, token_lengths, scores, count)))
    return NBest(tokens, token_lengths, scores, count)


@functools.lru_cache(maxsize=1)
def _native_search():
    fn = load_native("prefix_beam_search").ctc_prefix_beam_search
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 4
    fn.restype = None
    return fn


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
