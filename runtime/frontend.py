"""Kaldi fbank exactly as WeNet computes it (torchaudio.compliance.kaldi.fbank, dither 0).

Povey window, 25 ms frames every 10 ms with snip_edges, DC removal, pre-emphasis 0.97, 512-point
power spectrum, 80 HTK mel bins from 20 Hz to Nyquist, log floored at FLT_EPSILON. On a GPU the same
math runs as two Triton kernels around an fp64 FFT (``plugins.fbank``); elsewhere as torch ops below.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from core.compiled import capture_graph, pick_bucket
from plugins import runs_on_gpu
from plugins.fbank import FLT_EPSILON, PREEMPHASIS, log_mel


@functools.lru_cache(maxsize=8)
def mel_banks(num_bins: int, padded_window: int, sample_rate: int, low_freq: float = 20.0,
              device: torch.device | None = None) -> torch.Tensor:
    """(num_bins, padded_window // 2 + 1) triangular HTK-mel filters; the Nyquist column is 0. Cached per device:
    a copy from pageable host memory would wait for all work queued on the GPU."""
    if device is not None and device.type != "cpu":
        return mel_banks(num_bins, padded_window, sample_rate, low_freq).to(device)

    def mel(f):
        return 1127.0 * torch.log(1.0 + f / 700.0)

    num_fft_bins = padded_window // 2
    nyquist = 0.5 * sample_rate
    mel_low, mel_high = mel(torch.tensor(low_freq)), mel(torch.tensor(nyquist))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    freqs = mel(sample_rate / padded_window * torch.arange(num_fft_bins, dtype=torch.float32)).unsqueeze(0)
    up = (freqs - left) / (center - left)
    down = (right - freqs) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


@functools.lru_cache(maxsize=8)
def povey_window(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Cached per device, as ``mel_banks``."""
    if device is not None and device.type != "cpu":
        return povey_window(length).to(device)
    return torch.hann_window(length, periodic=False, dtype=torch.float32).pow(0.85)


def num_frames(num_samples: int, frame_length: int = 400, frame_shift: int = 160) -> int:
    return 0 if num_samples < frame_length else 1 + (num_samples - frame_length) // frame_shift


class FrameLayout(NamedTuple):
    """A frontend's framing in samples: frame length, shift, and the FFT size (the length's next power of two)."""

    length: int
    shift: int
    padded: int

    @classmethod
    def of(cls, frame_length_ms: int, frame_shift_ms: int, sample_rate: int) -> FrameLayout:
        length = int(sample_rate * frame_length_ms / 1000)
        return cls(length, int(sample_rate * frame_shift_ms / 1000), 1 << math.ceil(math.log2(length)))


class Features(NamedTuple):
    """A batch's fbank as the encoder takes it: (B, T, mels) fp32, zero past each utterance's frames, and the frame
    counts."""

    padded: torch.Tensor
    lengths: list[int]

    @classmethod
    def of(cls, feats: list[torch.Tensor]) -> Features:
        """Per-utterance (T_i, mels) features padded with zeros, like WeNet (one utterance: a view, no copy)."""
        padded = feats[0][None] if len(feats) == 1 else torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        return cls(padded, [f.shape[0] for f in feats])

    def utterances(self) -> list[torch.Tensor]:
        """Each utterance's (T_i, mels) features: views of the padded batch."""
        return [self.padded[b, :n] for b, n in enumerate(self.lengths)]


def fbank(samples: np.ndarray | torch.Tensor, num_mel_bins: int = 80, frame_length_ms: int = 25,
          frame_shift_ms: int = 10, sample_rate: int = 16000) -> torch.Tensor:
    """(T, num_mel_bins) float32 log-mel energies of int16-scale mono samples."""
    return fbank_batch([samples], num_mel_bins, frame_length_ms, frame_shift_ms, sample_rate)[0]


def fbank_batch(waves: list[np.ndarray | torch.Tensor], num_mel_bins: int = 80, frame_length_ms: int = 25,
                frame_shift_ms: int = 10, sample_rate: int = 16000,
                device: str | torch.device | None = None) -> list[torch.Tensor]:
    """Fbank of several utterances at once (``fbank_padded``), per utterance (views of the padded batch)."""
    return fbank_padded(waves, num_mel_bins, frame_length_ms, frame_shift_ms, sample_rate, device).utterances()


def fbank_padded(waves: list[np.ndarray | torch.Tensor], num_mel_bins: int = 80, frame_length_ms: int = 25,
                 frame_shift_ms: int = 10, sample_rate: int = 16000,
                 device: str | torch.device | None = None) -> Features:
    """Fbank of several utterances at once, on ``device`` (default: where the first wave is): the frames of all
    utterances go through one FFT and one mel projection. Waves may be int16, alone or mixed with float ones
    (converted once, after framing). On a GPU, two kernels and the FFT (``plugins.fbank``) write the padded batch."""
    length, shift, padded = FrameLayout.of(frame_length_ms, frame_shift_ms, sample_rate)
    waves = [torch.as_tensor(w) for w in waves]
    device = torch.device(device) if device is not None else waves[0].device
    counts = [num_frames(w.numel(), length, shift) for w in waves]
    if max(counts) == 0:
        return Features(torch.zeros(len(waves), 0, num_mel_bins, device=device), counts)
    window, banks = povey_window(length, device), mel_banks(num_mel_bins, padded, sample_rate, device=device)
    if runs_on_gpu(device):
        samples, starts = one_buffer([w.to(device) for w in waves])
        # page-locked, so that the copy is queued without waiting for the GPU
        table = torch.from_numpy(wave_table(starts, counts)).pin_memory().to(device, non_blocking=True)
        return Features(log_mel(samples, table, sum(counts), max(counts), window, banks, padded, shift), counts)
    framed = [w.to(device).as_strided((n, length), (shift, 1)) for w, n in zip(waves, counts) if n]
    frames = torch.cat(framed).float()
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # replicate-padded shift for x[0]
    frames = (frames - PREEMPHASIS * previous) * window
    spectrum = torch.fft.rfft(frames, n=padded).abs().pow(2.0)
    out = torch.clamp(spectrum @ banks.T, min=FLT_EPSILON).log()
    return Features.of(list(torch.split(out, counts)))


def wave_table(starts: list[int], counts: list[int]) -> np.ndarray:
    """``plugins.fbank.log_mel``'s (3, B) int64 table: each wave's first sample, its frame count, and its first row
    among the batch's frames (the counts before it)."""
    return np.array([starts, counts, np.cumsum([0, *counts[:-1]])], dtype=np.int64)


def one_buffer(waves: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """(one 1-D tensor holding every wave, each wave's first element in it): the storage that they all view (a native
    read's upload), else their concatenation (``cat`` promotes int16 mixed with float)."""
    storage = waves[0].untyped_storage()
    if all(w.dtype == waves[0].dtype and w.is_contiguous() and w.untyped_storage().data_ptr() == storage.data_ptr()
           for w in waves):
        whole = waves[0].new_empty(0).set_(storage, 0, (storage.nbytes() // waves[0].element_size(),))
        return whole, [w.storage_offset() for w in waves]
    return torch.cat([w.reshape(-1) for w in waves]), np.cumsum([0, *[w.numel() for w in waves[:-1]]]).tolist()


class FbankGraphs:
    """``fbank`` of one wave on a GPU as a CUDA-graph replay, a graph per frame bucket (the encoder's) and sample
    dtype: launching the two kernels and the FFT from Python took ~0.3 ms of host time for one 10 s file while the GPU
    worked 0.06 ms (H200 machine), and a lone file waits for all of it. The wave is copied into the bucket's sample
    buffer; frames past its own read whatever an earlier file left there and are cut off. What a call returns is the
    graph's output buffer, valid until the next call."""

    def __init__(self, buckets: list[int], device: torch.device, num_mel_bins: int = 80, frame_length_ms: int = 25,
                 frame_shift_ms: int = 10, sample_rate: int = 16000):
        self.buckets, self.device = buckets, device
        self.length, self.shift, self.padded = FrameLayout.of(frame_length_ms, frame_shift_ms, sample_rate)
        self.window = povey_window(self.length, device)
        self.banks = mel_banks(num_mel_bins, self.padded, sample_rate, device=device)
        self.pool = torch.cuda.graph_pool_handle()  # one output is read before the next replay, of any bucket
        self.graphs: dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]] = {}

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """(frames, num_mel_bins) fp32 of one wave on this device (its frames at most the largest bucket)."""
        n = num_frames(wave.numel(), self.length, self.shift)
        key = (pick_bucket(self.buckets, n), wave.dtype)
        samples, _, out, graph = self.graphs.get(key) or self._capture(*key)
        samples[:wave.numel()].copy_(wave)
        graph.replay()
        return out[0, :n]

    def samples(self, frames: int, dtype: torch.dtype) -> torch.Tensor:
        """A sample buffer for a bucket's frames, on this device."""
        return torch.zeros((frames - 1) * self.shift + self.length, dtype=dtype, device=self.device)

    def table(self, frames: int) -> torch.Tensor:
        """The (3, 1) wave table of one wave of ``frames`` frames at the start of a bucket's samples, on this device
        (a graph reads it in place: its frame count, row 1, may be rewritten before a replay)."""
        return torch.from_numpy(wave_table([0], [frames])).to(self.device)

    def log_mel(self, samples: torch.Tensor, table: torch.Tensor, frames: int) -> torch.Tensor:
        """``plugins.fbank.log_mel`` of one wave in a bucket's ``samples`` (its (3, 1) ``table``): (1, frames, mels),
        the kernels a graph captures."""
        return log_mel(samples, table, frames, frames, self.window, self.banks, self.padded, self.shift)

    def _capture(self, frames: int, dtype: torch.dtype):
        samples = self.samples(frames, dtype)
        table = self.table(frames)  # the whole bucket
        graph, out = capture_graph(lambda: self.log_mel(samples, table, frames), self.device, self.pool)
        self.graphs[(frames, dtype)] = samples, table, out, graph  # the graph reads samples and table in place
        return self.graphs[(frames, dtype)]
