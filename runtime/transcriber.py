"""Audio files to text: load and featurize each file, batch by length, encode, decode in each mode.

A file that cannot be transcribed (unreadable, corrupt, too short, too long for the built
profiles) yields a ``Failure`` naming it; the rest of the run goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from layers.subsampling import subsampled_length
from runtime.audio import AudioError, load_audio
from runtime.decoding import WeNetDecoding
from runtime.encoding import WeNetEncoding
from runtime.frontend import fbank_batch, num_frames
from runtime.native import usable_cpus
from runtime.search import DecodeResult, ctc_greedy_search, ctc_prefix_beam_search
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

    def read(self, items: Iterable[tuple[str, str]]) -> Iterator[tuple[str, np.ndarray | AudioError]]:
        """(key, samples or the error) per file, in order; files are read by a pool of threads (decoding
        releases the GIL), so reading many small files is not one core's sequential work."""
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            for key, future in [(key, pool.submit(self.audio, path)) for key, path in items]:
                try:
                    samples = future.result()
                except AudioError as e:
                    yield key, e
                    continue
                self.audio_seconds += len(samples) / self.engine.model.sample_rate
                yield key, samples

    def features(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Fbank of a batch at once, on the engines' device."""
        model = self.engine.model
        return fbank_batch(waves, model.num_mel_bins, model.frame_length, model.frame_shift, model.sample_rate,
                           device=self.engine.device)

    def transcribe(self, items: Iterable[tuple[str, str]], options: DecodingOptions) -> Iterator[Result | Failure]:
        self.check(options)
        ready, failed = [], []
        with self.times.stage("read audio"):
            for key, samples in self.read(items):
                (failed if isinstance(samples, AudioError) else ready).append((key, samples))
        for key, error in failed:
            yield Failure(key, str(error))
        ready.sort(key=lambda kv: -len(kv[1]))  # length-sorted batches waste little padding
        batch_size = max(1, min(options.batch_size, self.encoding.max_batch_size))
        for start in range(0, len(ready), batch_size):
            batch = ready[start:start + batch_size]
            keys = [k for k, _ in batch]
            try:
                with self.times.stage("fbank"):
                    feats = self.features([w for _, w in batch])
                decoded = self.decode(feats, options)
            except (ProfileError, RuntimeError) as e:  # one bad batch must not end the run
                for key in keys:
                    yield Failure(key, f"decoding failed: {e}")
                continue
            for mode, results in decoded.items():
                for key, result in zip(keys, results):
                    yield Result(key, mode, tokens_to_text(result.tokens, self.engine.vocab), result)

    def decode(self, feats: list[torch.Tensor], options: DecodingOptions) -> dict[str, list[DecodeResult]]:
        model = self.engine.model
        ctc_weight = model.ctc_weight if options.ctc_weight is None else options.ctc_weight
        reverse_weight = model.reverse_weight if options.reverse_weight is None else options.reverse_weight
        stage = self.times.stage
        with stage("encoder+ctc"):
            enc = self.encoding.encode(feats)
        log_probs, lens = enc.ctc_log_probs, enc.encoder_lens.cpu()  # searches move only what they need
        out: dict[str, list[DecodeResult]] = {}
        for mode in options.modes:
            if mode == "ctc_greedy_search":
                with stage("ctc greedy search"):
                    out[mode] = ctc_greedy_search(log_probs, lens, model.blank_id)
        if "ctc_prefix_beam_search" in options.modes or "attention_rescoring" in options.modes:
            with stage("ctc prefix beam search"):
                prefix = ctc_prefix_beam_search(log_probs, lens, options.beam_size, model.blank_id)
            if "ctc_prefix_beam_search" in options.modes:
                out["ctc_prefix_beam_search"] = prefix
        if "attention" in options.modes or "attention_rescoring" in options.modes:
            with stage("cross k/v"):
                kv = self.decoding.cross_kv(enc)
            if "attention_rescoring" in options.modes:
                with stage("rescoring"):
                    out["attention_rescoring"] = self.decoding.rescore(prefix, enc, kv, ctc_weight, reverse_weight)
            if "attention" in options.modes:
                with stage("attention beam search"):
                    out["attention"] = self.decoding.attention_beam_search(enc, kv, options.beam_size)
        return {mode: out[mode] for mode in options.modes}
