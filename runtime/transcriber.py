"""Audio files to text: load and featurize each file, batch by length, encode, decode in each mode.

A file that cannot be transcribed (unreadable, corrupt, too short, too long for the built
profiles) yields a ``Failure`` naming it; the rest of the run goes on.
"""

from __future__ import annotations

import functools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from layers.subsampling import subsampled_length
from models.wenet.config import ModelConfig
from plugins import runs_on_gpu
from runtime.audio import AudioError, PcmWavs, duration, pcm_wavs, read_audio
from runtime.decoding import RescoringScores, WeNetDecoding
from runtime.encoding import WeNetEncoding
from runtime.file_graphs import FileGraphs
from runtime.frontend import FbankGraphs, Features, fbank_padded, num_frames
from runtime.native import usable_cpus
from runtime.search import DecodeResult, NBest, PendingNBest, ctc_greedy_search
from runtime.session import EngineDir, ProfileError

# Readers: a batch's plain PCM WAVs are one native read (no GIL held); other files go through libsndfile's Python layer
# one by one, and each such reader holds the GIL that the thread queuing the GPU work needs (H200 machine, 16 CPUs,
# files read through libsndfile: 1 / 2 / 4 / 8 readers 32,500 / 31,300 / 24,100-28,100 / 23,900x end to end).
READ_THREADS = max(1, min(4, usable_cpus() // 4))
READ_AHEAD = 4  # batches whose files are being read (and uploaded) while earlier ones decode
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


class Upload(NamedTuple):
    """One file's samples (int16 or float32, ``read_audio``'s) on the engines' device, usable once ``ready`` (a CUDA
    event; None: now) has passed."""

    samples: torch.Tensor
    ready: torch.cuda.Event | None


class Encoded(NamedTuple):
    """A batch after its device work (``Transcriber.encode``): what the prefix search and rescoring need."""

    lens: torch.Tensor  # encoder lengths, host
    search: PendingNBest | None  # the CTC prefix beam search, started
    encoder_out: torch.Tensor | None  # for the rescoring
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

    def weights(self, model: ModelConfig) -> tuple[float, float]:
        """(ctc_weight, reverse_weight) of the rescoring: these options' where set, else the model's."""
        return (model.ctc_weight if self.ctc_weight is None else self.ctc_weight,
                model.reverse_weight if self.reverse_weight is None else self.reverse_weight)


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
        # the readers' uploads run on a stream of their own, so that they wait for no queued compute
        self.uploads = torch.cuda.Stream(self.engine.device) if self.engine.device.type == "cuda" else None
        # the GPU prefix search on a stream of its own, so that it overlaps the next batches' work
        self.searches = torch.cuda.Stream(self.engine.device) if self.engine.device.type == "cuda" else None
        # a lone file's fbank as a CUDA-graph replay, in the encoder's frame buckets (compiled engines record them)
        model, frames = self.engine.model, self.engine.buckets.get("frames")
        self.fbank_graphs = FbankGraphs(frames, self.engine.device, model.num_mel_bins, model.frame_length,
                                        model.frame_shift, model.sample_rate) if (
            frames and self.engine.reuses_outputs and runs_on_gpu(self.engine.device)) else None
        # the file readers and the thread that waits for each batch's n-best live as long as this object: a single
        # file's latency would otherwise include starting them
        self.readers = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="reader")
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        # a lone file's whole device work as one CUDA graph (compiled engines on a GPU)
        self.file_graphs = FileGraphs(self.engine, self.decoding, self.fbank_graphs) if (
            self.fbank_graphs is not None) else None

    def check(self, options: DecodingOptions) -> None:
        """Options the built engines cannot serve fail here, before any audio is read."""
        if {"ctc_prefix_beam_search", "attention", "attention_rescoring"} & set(options.modes):
            self.decoding.check_beam(options.beam_size)

    def check_length(self, path: str, samples: int) -> None:
        """A file's sample count against the encoder's frame profile."""
        model = self.engine.model
        frames = num_frames(samples, model.sample_rate * model.frame_length // 1000,
                            model.sample_rate * model.frame_shift // 1000)
        seconds = samples / model.sample_rate
        if samples == 0:
            raise AudioError(f"{path}: empty audio (0 samples)")
        if subsampled_length(frames, model.encoder.input_layer) < 1:
            raise AudioError(f"{path}: too short to transcribe ({seconds:.3f} s of frames; at least "
                             f"{self.encoding.frames.min} frames are needed)")
        if frames > self.encoding.frames.max:
            raise AudioError(f"{path}: {seconds:.1f} s is longer than the engines were built for "
                             f"({self.encoding.frames.max} frames); rebuild with a larger --max_seconds")

    def audio(self, path: str) -> Upload:
        """The samples of one file through libsndfile, checked against the encoder's frame profile, on the engines'
        device."""
        samples = read_audio(path, self.engine.model.sample_rate)
        self.check_length(path, len(samples))
        return self.upload(torch.from_numpy(samples))

    def read_wavs(self, files: list[tuple[int, str]], layout: PcmWavs,
                  upload: bool = True) -> list[Upload | AudioError | None]:
        """Plain 16-bit PCM WAV files (index in ``layout``, path) read natively into one page-locked buffer and
        uploaded by one copy (not ``upload``: left there, for a copy of the caller's); per file its upload, the error
        that rules it out, or None where libsndfile is to read it (a file that changed or was cut short since its
        header was read)."""
        out: list[Upload | AudioError | None] = [None] * len(files)
        wanted = []  # (position in files, index in layout)
        for n, (i, path) in enumerate(files):
            try:
                self.check_length(path, int(layout.samples[i]))
                wanted.append((n, i))
            except AudioError as e:
                out[n] = e
        if not wanted:
            return out
        counts = np.array([layout.samples[i] for _, i in wanted])
        positions = np.cumsum(counts) - counts
        host = torch.empty(int(counts.sum()), dtype=torch.int16, pin_memory=self.uploads is not None)
        ok = layout.read(np.array([i for _, i in wanted]), host.numpy(), positions)
        buffer = self.upload(host) if upload else Upload(host, None)
        for (n, _), at, count, read in zip(wanted, positions, counts, ok):
            if read:
                out[n] = Upload(buffer.samples[at:at + count], buffer.ready)
        return out

    def native_upload(self, wavs: Callable[[], list[Upload | AudioError | None]], n: int, path: str) -> Upload:
        """File ``n`` of a native read (``wavs`` returns what ``read_wavs`` did): its upload, its error, or
        libsndfile's read of it."""
        entry = wavs()[n]
        if isinstance(entry, AudioError):
            raise entry
        return entry if entry is not None else self.audio(path)

    def upload(self, samples: torch.Tensor) -> Upload:
        """Host samples on the engines' device, copied on the uploads stream (without waiting, from page-locked
        memory)."""
        if self.uploads is None:
            return Upload(samples, None)
        with torch.cuda.stream(self.uploads):
            tensor = samples.to(self.engine.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        return Upload(tensor, ready)

    def read(self, batch: list[tuple[str, str, int]], layout: PcmWavs | None, by_caller: bool = False,
             upload: bool = True) -> list[tuple[str, Callable[[], Upload]]]:
        """A batch's files being read: per file (key, a call that returns its upload or raises its AudioError). The
        plain PCM WAVs (``layout`` index >= 0) in one task, the others one task each, on the reader threads; or, if
        ``by_caller``, by the calling thread when the first of them is asked for (a batch needed at once: handing it
        to a reader would only add the thread's wake-up to the wait, ~0.15 ms for one file on the H200 machine), and
        then, if not ``upload``, its plain WAVs left in page-locked host memory (``read_wavs``)."""
        native = [(i, path) for _, path, i in batch if i >= 0]
        if by_caller:
            wavs = functools.cache(functools.partial(self.read_wavs, native, layout, upload))
        else:
            wavs = self.readers.submit(self.read_wavs, native, layout).result if native else None
        reads, n = [], 0
        for key, path, i in batch:
            if i >= 0:
                reads.append((key, functools.partial(self.native_upload, wavs, n, path)))
                n += 1
            else:
                reads.append((key, functools.partial(self.audio, path) if by_caller else
                              self.readers.submit(self.audio, path).result))
        return reads

    def features(self, waves: list[Upload]) -> Features:
        """Fbank of a batch at once, on the engines' device, padded as the encoder takes it."""
        model = self.engine.model
        if self.uploads is not None:
            compute = torch.cuda.current_stream(self.engine.device)
            # once per upload: the files of one native read share its copy (one buffer, one event)
            for wave in {id(w.ready): w for w in waves}.values():
                compute.wait_event(wave.ready)
                wave.samples.record_stream(compute)  # its memory is not reused before the fbank has read it
        if len(waves) == 1 and self.fbank_graphs is not None:
            return Features.of([self.fbank_graphs(waves[0].samples)])  # read by the encoder before the next replay
        return fbank_padded([w.samples for w in waves], model.num_mel_bins, model.frame_length, model.frame_shift,
                            model.sample_rate, device=self.engine.device)

    def transcribe(self, items: Iterable[tuple[str, str]], options: DecodingOptions) -> Iterator[Result | Failure]:
        self.check(options)
        items = list(items)
        # Batches are made from the files' header durations, longest first (little padding); a thread pool
        # reads (and uploads) the files of the next READ_AHEAD batches while earlier batches decode. The headers are
        # read here, natively for plain PCM WAVs; through libsndfile that is mostly Python work under the GIL, which
        # the reader threads made 3-5x slower (H200 machine, 1,000 files: 20 ms in one thread, 60-110 ms on 4 or 8).
        rate = self.engine.model.sample_rate
        layout = pcm_wavs([path for _, path in items], rate)  # the native reader's files: durations known
        ordered = []
        for n, (key, path) in enumerate(items):
            native = layout is not None and layout.samples[n] >= 0
            try:
                seconds = layout.samples[n] / rate if native else duration(path)
            except AudioError as e:
                yield Failure(key, str(e))
                continue
            ordered.append((-seconds, n, key, path, n if native else -1))
        ordered.sort()
        if len(ordered) == 1 and self.file_graphs is not None and self.file_graphs.serves(options.modes,
                                                                                          options.beam_size):
            yield from self._transcribe_alone(*ordered[0][2:], layout, options)
            return
        batch_size = max(1, min(options.batch_size, self.encoding.max_batch_size))
        batches = [[(key, path, native) for _, _, key, path, native in ordered[s:s + batch_size]]
                   for s in range(0, len(ordered), batch_size)]
        # Batches overlap. This thread, the only one that queues compute, queues batch i's fbank, encoder and
        # prefix search (on a GPU; elsewhere its top-k), then batch i-1's rescoring, then reads batch i-2's
        # scores; the worker thread meanwhile waits for batch i's n-best (or runs the native search, which
        # releases the GIL) and makes its rescoring inputs. So the GPU always has work queued while this thread
        # waits. Timed stages do not overlap.
        # The first batch is read by this thread, once the reads ahead of it are under way. A lone batch's prefix
        # search is waited for here too: no later batch has work to queue meanwhile.
        reads: deque[list[tuple[str, Callable[[], Upload]]]] = deque()
        searching = rescoring = None  # the batches before: prefix search under way; rescoring queued
        for j in range(len(batches) + 2):
            while len(reads) < READ_AHEAD and j + len(reads) < len(batches):
                reads.append(self.read(batches[j + len(reads)], layout, by_caller=j + len(reads) == 0))
            started = None
            if reads:
                failures, started = self._start(reads.popleft(), options, alone=len(batches) == 1)
                yield from failures
            queued = self._queue_rescoring(*searching, options) if searching is not None else None
            if rescoring is not None:
                yield from self._results(*rescoring, options)
            searching, rescoring = started, queued

    def _transcribe_alone(self, key: str, path: str, native: int, layout: PcmWavs | None,
                          options: DecodingOptions) -> Iterator[Result | Failure]:
        """One file through ``FileGraphs``: read by this thread (a plain WAV into page-locked memory, which the graph's
        input copy uploads), then one graph launch and one wait."""
        try:
            with self.times.stage("read audio"):
                wave = self.read([(key, path, native)], layout, by_caller=True, upload=False)[0][1]()
        except AudioError as e:
            yield Failure(key, str(e))
            return
        self.audio_seconds += wave.samples.numel() / self.engine.model.sample_rate
        if wave.ready is not None:
            torch.cuda.current_stream(self.engine.device).wait_event(wave.ready)
        try:
            with self.times.stage("fbank to rescoring (one graph)"):
                results = self.file_graphs(wave.samples, options.modes, options.beam_size,
                                           *options.weights(self.engine.model))
        except (ProfileError, RuntimeError) as e:
            yield Failure(key, f"decoding failed: {e}")
            return
        for mode in options.modes:
            yield Result(key, mode, tokens_to_text(results[mode].tokens, self.engine.vocab), results[mode])

    def _start(self, reads: list[tuple[str, Callable[[], Upload]]], options: DecodingOptions,
               alone: bool = False) -> tuple[list[Failure], tuple[list[str], Encoded, Future] | None]:
        """A batch's device work queued and its prefix search started (``alone``: done, by this thread): (failed
        files, what ``_queue_rescoring`` needs)."""
        batch, failed = [], []
        with self.times.stage("read audio"):  # waiting for the readers
            for key, read in reads:
                try:
                    batch.append((key, read()))
                except AudioError as e:
                    failed.append(Failure(key, str(e)))
        if not batch:
            return failed, None
        self.audio_seconds += sum(w.samples.numel() for _, w in batch) / self.engine.model.sample_rate
        keys = [k for k, _ in batch]
        try:
            with self.times.stage("fbank"):
                feats = self.features([w for _, w in batch])
            encoded = self.encode(feats, options)
        except (ProfileError, RuntimeError) as e:  # one bad batch must not end the run
            return failed + [Failure(key, f"decoding failed: {e}") for key in keys], None
        if alone:
            search = Future()
            try:
                search.set_result(self.prefix_search(encoded, options, on_device=True))
            except (ProfileError, RuntimeError) as e:
                search.set_exception(e)
        else:
            search = self.worker.submit(self.prefix_search, encoded, options)
        if self.times.enabled:
            wait([search])
        return failed, (keys, encoded, search)

    def _queue_rescoring(self, keys: list[str], encoded: Encoded, search: Future,
                         options: DecodingOptions) -> tuple[list[str], dict | Exception] | None:
        """The rescoring of a batch whose prefix search has been started queued: (keys, results as ``rescore``
        returns them, the rescoring's scores still on their way) or the error that failed the batch."""
        try:
            return keys, self.rescore(encoded, *search.result(), options, block=False)
        except (ProfileError, RuntimeError) as e:
            return keys, e

    def _results(self, keys: list[str], decoded: dict | Exception, options: DecodingOptions) -> Iterator[Result | Failure]:
        if isinstance(decoded, Exception):
            yield from (Failure(key, f"decoding failed: {decoded}") for key in keys)
            return
        for mode, results in decoded.items():
            if isinstance(results, RescoringScores):
                results = results.results()
            for key, result in zip(keys, results):
                yield Result(key, mode, tokens_to_text(result.tokens, self.engine.vocab), result)

    def decode(self, feats: Features | list[torch.Tensor], options: DecodingOptions) -> dict[str, list[DecodeResult]]:
        """Every mode of ``options`` for a batch of fbank features (padded, or per utterance), in order: ``encode`` (device),
        ``prefix_search`` (host), ``rescore`` (device)."""
        encoded = self.encode(feats, options)
        return self.rescore(encoded, *self.prefix_search(encoded, options, on_device=True), options)

    def encode(self, feats: Features | list[torch.Tensor], options: DecodingOptions) -> Encoded:
        """A batch's device work: encoder, greedy search, the prefix search started (on a GPU the search itself,
        elsewhere its frame candidates), attention beam search. The prefix search and rescoring need no wait for the
        device here (the encoder lengths are known on the host). What outlives the next batch is owned: a compiled
        engine's outputs are CUDA-graph buffers that its next call overwrites."""
        model, stage = self.engine.model, self.times.stage
        modes = options.modes
        feats = feats if isinstance(feats, Features) else Features.of(feats)
        with stage("encoder+ctc"):
            enc = self.encoding.encode(feats)
        lens = torch.tensor([max(subsampled_length(n, model.encoder.input_layer), 0) for n in feats.lengths],
                            dtype=torch.int32)
        out: dict[str, list[DecodeResult]] = {}
        if "ctc_greedy_search" in modes:
            with stage("ctc greedy search"):
                out["ctc_greedy_search"] = ctc_greedy_search(enc.ctc_top_log_probs, enc.ctc_top_labels, lens,
                                                             model.blank_id)
        search = None
        if "ctc_prefix_beam_search" in modes or "attention_rescoring" in modes:
            with stage("ctc prefix beam search" if runs_on_gpu(self.engine.device) else "ctc candidates"):
                search = PendingNBest(enc.ctc_top_log_probs, enc.ctc_top_labels, enc.encoder_lens,
                                      options.beam_size, model.blank_id, self.searches)
        if "attention" in modes:
            with stage("attention beam search"):
                out["attention"] = self.decoding.attention_beam_search(enc, self.decoding.cross_kv(enc),
                                                                       options.beam_size)
        encoder_out = None
        if "attention_rescoring" in modes:
            encoder_out = enc.encoder_out.clone() if self.engine.reuses_outputs else enc.encoder_out
        return Encoded(lens, search, encoder_out, out)

    def prefix_search(self, encoded: Encoded, options: DecodingOptions,
                      on_device: bool = False) -> tuple[NBest | None, dict[str, torch.Tensor] | None]:
        """Host work: the n-best of an encoded batch's CTC prefix beam search (waited for, or searched here), and the
        rescoring's host inputs made from it (each None where no mode needs it). ``on_device``: a batch decoded alone,
        whose rescoring is to read the n-best where the GPU search left it (``DeviceRescoring``), where it can: no
        host inputs then."""
        if encoded.search is None:
            return None, None
        with self.times.stage("ctc prefix beam search"):
            nbest = encoded.search.result()
        if "attention_rescoring" not in options.modes or (
                on_device and encoded.search.on_device is not None and self.decoding.on_device is not None):
            return nbest, None
        return nbest, self.decoding.rescoring_inputs(nbest, *options.weights(self.engine.model))

    def rescore(self, encoded: Encoded, prefix: NBest | None, inputs: dict[str, torch.Tensor] | None,
                options: DecodingOptions, block: bool = True) -> dict[str, list[DecodeResult] | RescoringScores]:
        """Attention rescoring of the prefix search's n-best; every mode's results, in the order of ``options``.
        ``block=False``: the rescoring is queued, and its mode's entry is the ``RescoringScores`` to read later."""
        out = dict(encoded.results)
        if "ctc_prefix_beam_search" in options.modes:
            out["ctc_prefix_beam_search"] = prefix.results()
        if "attention_rescoring" in options.modes:
            with self.times.stage("rescoring"):
                if inputs is None:  # the n-best is on the GPU (``prefix_search``)
                    scores = self.decoding.on_device(prefix, encoded.search.on_device, encoded.encoder_out,
                                                     encoded.lens, *options.weights(self.engine.model))
                else:
                    scores = self.decoding.launch_rescoring(prefix, inputs, encoded.encoder_out, encoded.lens)
                out["attention_rescoring"] = scores.results() if block or self.times.enabled else scores
        return {mode: out[mode] for mode in options.modes}
