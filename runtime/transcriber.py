"""Audio files to text: load and featurize each file, batch by length, encode, decode in each mode.

A file that cannot be transcribed (unreadable, corrupt, too short, too long for the built
profiles) yields a ``Failure`` naming it; the rest of the run goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from layers.subsampling import subsampled_length
from runtime.audio import AudioError, duration, load_audio
from runtime.decoding import WeNetDecoding
from runtime.encoding import WeNetEncoding
from runtime.frontend import fbank_batch, num_frames
from runtime.native import usable_cpus
from runtime.search import DecodeResult, NBest, ctc_greedy_search, frame_candidates, prefix_search_on_host
from runtime.session import EngineDir, ProfileError

READ_THREADS = min(16, usable_cpus())
MODES = ("ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring")


@dataclass
class Result:
    key: str
    mode: str
    text: str
    result: DecodeResult

    def to_json(self) -> dict:
        r = self.result
        return {"key": self.key, "mode": self.mode, "text": self.text, "tokens": r.tokens, "score": r.score,
                "nbest": r.nbest, "nbest_scores": r.nbest_scores}


class Encoded(NamedTuple):
    """A batch after its device work (``Transcriber.encode``): what the prefix search and rescoring need."""

    lens: torch.Tensor  # encoder lengths, host
    candidates: tuple[torch.Tensor, torch.Tensor] | None  # frame_candidates, host
    kv: dict[str, torch.Tensor] | None  # cross-attention K/V
    results: dict[str, list[DecodeResult]]  # modes decoded on the device already


@dataclass
class Failure:
    key: str
    message: str


@dataclass
class DecodingOptions:
    modes: list[str] = field(default_factory=lambda: ["attention_rescoring"])
    beam_size: int = 10
    ctc_weight: float | None = None  # None: the model's training value
    reverse_weight: float | None = None
    batch_size: int = 16

    def __post_init__(self):
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown decoding modes {unknown}; choose from {list(MODES)}")


def tokens_to_text(tokens: list[int], vocab: list[str]) -> str:
    """Characters are joined; BPE word pieces ('▁' marks a word start) become words."""
    return "".join(vocab[t] for t in tokens).replace("▁", " ").strip()


def read_wav_scp(path: str) -> list[tuple[str, str]]:
    base = os.path.dirname(os.path.abspath(path))
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected 'key path', got {line.strip()!r}")
            key, wav = parts[0], parts[1].strip()
            items.append((key, wav if os.path.isabs(wav) or os.path.exists(wav) else os.path.join(base, wav)))
    return items


class StageTimes:
    """Wall seconds per pipeline stage. Off by default: timing a stage on a GPU means waiting for it at
    its end (a synchronization the pipeline otherwise avoids), so it is for profiling runs only."""

    def __init__(self, device: torch.device):
        self.device = device
        self.enabled = False
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Transcriber:
    def __init__(self, engine_dir: str, device: str = "cpu", compiled: bool | None = None):
        self.engine = EngineDir(engine_dir, device, compiled)
        self.encoding = WeNetEncoding(self.engine)
        self.decoding = WeNetDecoding(self.engine)
        self.audio_seconds = 0.0  # of the files featurized so far
        self.times = StageTimes(self.engine.device)

    def check(self, options: DecodingOptions) -> None:
        """Options the built engines cannot serve fail here, before any audio is read."""
        if {"ctc_prefix_beam_search", "attention", "attention_rescoring"} & set(options.modes):
            self.decoding.check_beam(options.beam_size)

    def audio(self, path: str) -> np.ndarray:
        """The samples of one file, checked against the encoder's frame profile."""
        model = self.engine.model
        samples = load_audio(path, model.sample_rate)
        frames = num_frames(len(samples), model.sample_rate * model.frame_length // 1000,
                            model.sample_rate * model.frame_shift // 1000)
        seconds = len(samples) / model.sample_rate
        if subsampled_length(frames, model.encoder.input_layer) < 1:
            raise AudioError(f"{path}: too short to transcribe ({seconds:.3f} s of frames; at least "
                             f"{self.encoding.frames.min} frames are needed)")
        if frames > self.encoding.frames.max:
            raise AudioError(f"{path}: {seconds:.1f} s is longer than the engines were built for "
                             f"({self.encoding.frames.max} frames); rebuild with a larger --max_seconds")
        return samples

    def features(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Fbank of a batch at once, on the engines' device."""
        model = self.engine.model
        return fbank_batch(waves, model.num_mel_bins, model.frame_length, model.frame_shift, model.sample_rate,
                           device=self.engine.device)

    def transcribe(self, items: Iterable[tuple[str, str]], options: DecodingOptions) -> Iterator[Result | Failure]:
        self.check(options)
        items = list(items)
        with ThreadPoolExecutor(max_workers=READ_THREADS) as readers:
            # Batches are made from the files' header durations, longest first (little padding), and the files
            # are read by a thread pool in that order while earlier batches decode.
            durations = [readers.submit(duration, path) for _, path in items]
            ordered = []
            for (key, path), seconds in zip(items, durations):
                try:
                    ordered.append((-seconds.result(), len(ordered), key, path))
                except AudioError as e:
                    yield Failure(key, str(e))
            ordered.sort()
            reads = [(key, readers.submit(self.audio, path)) for _, _, key, path in ordered]
            batch_size = max(1, min(options.batch_size, self.encoding.max_batch_size))
            yield from self._decode_batches([reads[s:s + batch_size] for s in range(0, len(reads), batch_size)],
                                            options)

    def _decode_batches(self, batches: list[list[tuple[str, Future]]],
                        options: DecodingOptions) -> Iterator[Result | Failure]:
        # Batches overlap: a worker thread runs batch i's prefix search (host work; the native search releases the
        # GIL) while this thread, the only one that touches the device, runs batch i+1's fbank and encoder and
        # then batch i's rescoring. Timed stages do not overlap.
        with ThreadPoolExecutor(max_workers=1) as worker:
            pending = None
            for reads in batches:
                batch, failed = [], []
                with self.times.stage("read audio"):  # waiting for the readers
                    for key, read in reads:
                        try:
                            batch.append((key, read.result()))
                        except AudioError as e:
                            failed.append(Failure(key, str(e)))
                yield from failed
                if not batch:
                    continue
                self.audio_seconds += sum(len(w) for _, w in batch) / self.engine.model.sample_rate
                keys = [k for k, _ in batch]
                try:
                    with self.times.stage("fbank"):
                        feats = self.features([w for _, w in batch])
                    encoded = self.encode(feats, options)
                except (ProfileError, RuntimeError) as e:  # one bad batch must not end the run
                    yield from (Failure(key, f"decoding failed: {e}") for key in keys)
                    continue
                search = worker.submit(self.prefix_search, encoded, options)
                if self.times.enabled:
                    wait([search])
                if pending is not None:
                    yield from self._finish(*pending, options)
                pending = keys, encoded, search
            if pending is not None:
                yield from self._finish(*pending, options)

    def _finish(self, keys: list[str], encoded: Encoded, search: Future, options: DecodingOptions) -> Iterator[Result | Failure]:
        try:
            decoded = self.rescore(encoded, search.result(), options)
        except (ProfileError, RuntimeError) as e:
            yield from (Failure(key, f"decoding failed: {e}") for key in keys)
            return
        for mode, results in decoded.items():
            for key, result in zip(keys, results):
                yield Result(key, mode, tokens_to_text(result.tokens, self.engine.vocab), result)

    def decode(self, feats: list[torch.Tensor], options: DecodingOptions) -> dict[str, list[DecodeResult]]:
        """Every mode of ``options`` for a batch of fbank features, in order: ``encode`` (device),
        ``prefix_search`` (host), ``rescore`` (device)."""
        encoded = self.encode(feats, options)
        return self.rescore(encoded, self.prefix_search(encoded, options), options)

    def encode(self, feats: list[torch.Tensor], options: DecodingOptions) -> Encoded:
        """A batch's device work up to the prefix search: encoder, greedy search, the prefix search's frame
        candidates, cross-attention K/V, attention beam search. What outlives the next batch is owned: a
        compiled engine's outputs are CUDA-graph buffers that its next call overwrites."""
        model, stage = self.engine.model, self.times.stage
        modes = options.modes
        with stage("encoder+ctc"):
            enc = self.encoding.encode(feats)
        lens = enc.encoder_lens.cpu()
        out: dict[str, list[DecodeResult]] = {}
        if "ctc_greedy_search" in modes:
            with stage("ctc greedy search"):
                out["ctc_greedy_search"] = ctc_greedy_search(enc.ctc_log_probs, lens, model.blank_id)
        candidates = None
        if "ctc_prefix_beam_search" in modes or "attention_rescoring" in modes:
            with stage("ctc top-k"):
                candidates = frame_candidates(enc.ctc_log_probs, options.beam_size)
        kv = None
        if "attention" in modes or "attention_rescoring" in modes:
            with stage("cross k/v"):
                kv = self.decoding.cross_kv(enc)
            if "attention" in modes:
                with stage("attention beam search"):
                    out["attention"] = self.decoding.attention_beam_search(enc, kv, options.beam_size)
            if "attention_rescoring" in modes and self.engine.reuses_outputs:
                kv = {name: value.clone() for name, value in kv.items()}
        return Encoded(lens, candidates, kv, out)

    def prefix_search(self, encoded: Encoded, options: DecodingOptions) -> NBest | None:
        """The CTC prefix beam search of an encoded batch, on the host (None where no mode needs it)."""
        if encoded.candidates is None:
            return None
        with self.times.stage("ctc prefix beam search"):
            return prefix_search_on_host(*encoded.candidates, encoded.lens, options.beam_size,
                                         self.engine.model.blank_id)

    def rescore(self, encoded: Encoded, prefix: NBest | None,
                options: DecodingOptions) -> dict[str, list[DecodeResult]]:
        """Attention rescoring of the prefix search's n-best; every mode's results, in the order of ``options``."""
        model = self.engine.model
        out = dict(encoded.results)
        if "ctc_prefix_beam_search" in options.modes:
            out["ctc_prefix_beam_search"] = prefix.results()
        if "attention_rescoring" in options.modes:
            ctc_weight = model.ctc_weight if options.ctc_weight is None else options.ctc_weight
            reverse_weight = model.reverse_weight if options.reverse_weight is None else options.reverse_weight
            with self.times.stage("rescoring"):
                out["attention_rescoring"] = self.decoding.rescore(prefix, encoded.lens, encoded.kv,
                                                                   ctc_weight, reverse_weight)
        return {mode: out[mode] for mode in options.modes}
