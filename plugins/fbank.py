"""Kaldi fbank on the GPU in three launches: a batch's frames -> windowed frames, one FFT, power -> padded log-mel.

What it computes is ``runtime.frontend``'s torch path (WeNet's fbank). That path is ~15 kernels, each launched from
Python: for one 10 s file the host spent ~0.45-0.7 ms launching them while the GPU work took a fraction of that. Here
one kernel takes int16 or float frames to DC-removed, pre-emphasized, Povey-windowed frames zero-padded to the FFT
size; cuFFT transforms them; a second kernel squares the spectrum, applies the mel filters and the floored log. One
10 s file's fbank stage went from 0.56 to 0.33 ms (H200). Not a network op: the frontend runs before the engines.

A batch is one sample buffer (a native read's upload already is one) and a (3, B) table of each wave's first sample,
frame count and first packed row; the kernels find a frame's samples through it and write the encoder's padded
(B, T, mels) input directly. Before, each batch built a strided view per wave, concatenated the frames and split the
features, and the encoder padded them again: 64 copies and ~1.4 ms of host time a batch of 64 files (H200 machine).

The mel filters are a GEMM on tensor cores in tf32x3 (three TF32 products, fp32-accurate): as an IEEE fp32 product
(FMA loops) that kernel took 14.3 ms of the 1,000-file end-to-end pass, more than the window kernel and the FFT
together; in tf32x3 it takes 888 -> 284 us for 76,800 frames (H200), with the same error against fp64 math (1.3e-6).

The frames and the FFT are fp64. In fp32 the FFT's rounding is relative to a frame's whole energy, so a mel bin far
below its frame's loudest (the lowest bins of voiced frames) carries errors of ~1e-3 in its log, different in every
implementation: on the real wavs, fp32 kernels here differed from the CPU's torch fbank by up to 1.5e-3, torch on the
GPU by up to 9.8e-4. In fp64 the difference is at most 4.2e-4 (the CPU's own fp32 error), and the distance to
kaldi-native-fbank at most 1.0e-3 (torch on the GPU 1.6e-3, on the CPU 1.3e-3). Once the power spectrum is accurate,
the mel sums of positive terms are accurate in fp32.
"""

from __future__ import annotations

import torch

from plugins import tl, triton

PREEMPHASIS = 0.97
FLT_EPSILON = 1.1920928955078125e-07

if triton is not None:

    # one compiled variant per sample dtype: waves start anywhere in the uploaded samples, and batch and frame counts
    # vary, so specializing on their alignment or divisibility would compile new variants (~1 s each) mid-run
    @triton.jit(do_not_specialize=["batch"], do_not_specialize_on_alignment=["SAMPLES"])
    def _window_kernel(SAMPLES, WAVES, WINDOW, OUT, batch, L: tl.constexpr, SHIFT: tl.constexpr,
                       PADDED: tl.constexpr, PREEMPH: tl.constexpr, BLOCK_F: tl.constexpr):
        # wave b's frames t (its samples from WAVES[0, b], WAVES[1, b] frames) -> packed rows WAVES[2, b] + t of
        # (frames, PADDED) fp64
        b = tl.program_id(0)
        first = tl.program_id(1) * BLOCK_F
        count = tl.load(WAVES + batch + b)
        if first < count:
            t = first + tl.arange(0, BLOCK_F)
            ks = tl.arange(0, PADDED)
            inside = (t < count)[:, None] & (ks < L)[None, :]
            base = SAMPLES + tl.load(WAVES + b) + t[:, None].to(tl.int64) * SHIFT
            x = tl.load(base + ks[None, :], mask=inside, other=0).to(tl.float64)
            mean = tl.sum(x, 1) / L
            # x[k - 1], with x[-1] = x[0] (Kaldi's pre-emphasis of the first sample)
            previous = tl.load(base + tl.maximum(ks - 1, 0)[None, :], mask=inside, other=0).to(tl.float64)
            window = tl.load(WINDOW + ks, mask=ks < L, other=0.0).to(tl.float64)
            y = ((x - mean[:, None]) - PREEMPH * (previous - mean[:, None])) * window[None, :]
            rows = tl.load(WAVES + 2 * batch + b) + t.to(tl.int64)
            tl.store(OUT + rows[:, None] * PADDED + ks[None, :], tl.where(inside, y, 0.0), mask=(t < count)[:, None])

    @triton.jit(do_not_specialize=["batch", "frames"])
    def _log_mel_kernel(SPECTRUM, WAVES, BANKS, OUT, batch, frames, BINS: tl.constexpr, MELS: tl.constexpr,
                        FLOOR: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
        # spectrum (rows, BINS) complex as (rows, BINS, 2) fp64; banks (MELS, BINS) -> out[b, t] =
        # log(max(|X|^2 · banksᵀ, eps)) of wave b's frame t (packed row WAVES[2, b] + t), 0 past its frames
        b = tl.program_id(0)
        t = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        present = t < tl.load(WAVES + batch + b)
        rows = tl.load(WAVES + 2 * batch + b) + t.to(tl.int64)
        mels = tl.arange(0, BLOCK_M)
        parts = tl.arange(0, 2)  # (re, im) of a bin, loaded as one contiguous pair
        acc = tl.zeros([BLOCK_F, BLOCK_M], dtype=tl.float32)
        for k0 in range(0, BINS, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            inside = present[:, None] & (ks < BINS)[None, :]
            at = SPECTRUM + ((rows[:, None] * BINS + ks[None, :]) * 2)[:, :, None] + parts[None, None, :]
            x = tl.load(at, mask=inside[:, :, None], other=0.0)
            power = tl.sum(x * x, 2).to(tl.float32)
            banks = tl.load(BANKS + mels[None, :] * BINS + ks[:, None], mask=(ks < BINS)[:, None] & (mels < MELS)[None, :],
                            other=0.0)
            acc = tl.dot(power, banks, acc, input_precision="tf32x3")
        out = tl.where(present[:, None], tl.log(tl.maximum(acc, FLOOR)), 0.0)
        tl.store(OUT + ((b * frames + t)[:, None].to(tl.int64)) * MELS + mels[None, :], out,
                 mask=(t < frames)[:, None] & (mels < MELS)[None, :])


def log_mel(samples: torch.Tensor, waves: torch.Tensor, rows: int, frames: int, window: torch.Tensor,
            banks: torch.Tensor, padded: int, shift: int) -> torch.Tensor:
    """A batch's log-mel energies, zero-padded: (B, frames, mels) fp32. ``samples`` (S,) int16 or float holds every
    wave; ``waves`` (3, B) int64 on the same device: each wave's first sample in ``samples``, its frame count (at
    most ``frames``) and the sum of the counts before it; ``rows`` is the sum of all counts. The Povey window (L,)
    and the mel banks (mels, padded // 2 + 1) are on that device too."""
    batch, (mels, bins) = waves.shape[1], banks.shape
    windowed = torch.empty((rows, padded), dtype=torch.float64, device=samples.device)
    # 8 fp64 frames of 512 on 8 warps: 98 registers, no spills (32 frames on 4 warps spilled 14 KB per thread)
    _window_kernel[(batch, triton.cdiv(frames, 8))](samples, waves, window, windowed, batch, L=window.shape[0],
                                                    SHIFT=shift, PADDED=padded, PREEMPH=PREEMPHASIS, BLOCK_F=8,
                                                    num_warps=8)
    spectrum = torch.view_as_real(torch.fft.rfft(windowed))
    out = torch.empty((batch, frames, mels), dtype=torch.float32, device=samples.device)
    # 16 frames a program, 16 bins a step (of 4 to 128 frames and 16 to 64 bins, the fastest at 1,000 and 76,800 frames
    # on the H200 or within 20 % of it)
    _log_mel_kernel[(batch, triton.cdiv(frames, 16))](spectrum, waves, banks, out, batch, frames, BINS=bins, MELS=mels,
                                                      FLOOR=FLT_EPSILON, BLOCK_F=16, BLOCK_K=16,
                                                      BLOCK_M=triton.next_power_of_2(mels), num_warps=4, num_stages=2)
    return out
