"""``wenet_trt::depthwise_norm_act``: the conformer conv module's depthwise convolution, LayerNorm and activation in
one pass over channels-last frames.

What it computes is ``core.composite.depthwise_norm_act``. Each program takes BLOCK_T output frames of one utterance
with all C channels (the norm needs whole frames): k masked loads of shifted frames times the taps, the bias, the
norm in fp32, the cast to the output dtype, the activation. Inductor fused the same graph into one kernel, but one
whose program covered a frame or two: 7.2 us at batch 1 x 250 frames, 22.1 us at batch 64 (H200), against 4.0 and
19.9 for this kernel's 16-frame tiles on 8 warps (measured in session 22).
"""

from __future__ import annotations

import torch

from core.composite import run_decomposition
from plugins import kernel_available, launchable, planned_size, register_op, times_sigmoid, tl, triton

if triton is not None:

    @triton.jit
    def _depthwise_norm_act_kernel(X, TAPS, BIAS, VALID, PAD_VALUE, NORM_W, NORM_B, OUT, T_IN, T_OUT, eps,
                                   C: tl.constexpr, CP: tl.constexpr, KS: tl.constexpr, PAD_LEFT: tl.constexpr,
                                   BLOCK_T: tl.constexpr, HAS_VALID: tl.constexpr, HAS_PAD_VALUE: tl.constexpr,
                                   HAS_NORM: tl.constexpr, SWISH: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        c = tl.arange(0, CP)
        channel = c < C
        acc = tl.zeros([BLOCK_T, CP], dtype=tl.float32)
        if HAS_PAD_VALUE:
            pad_value = tl.load(PAD_VALUE + c, mask=channel, other=0.0)[None, :]
        for i in tl.static_range(KS):  # in the decomposition's order: tap 0 first
            src = t + (i - PAD_LEFT)
            real = (src >= 0) & (src < T_IN) & (t < T_OUT)
            if HAS_VALID:
                real = real & (tl.load(VALID + b * T_IN + src, mask=real, other=0) != 0)
            x = tl.load(X + (b * T_IN + src)[:, None] * C + c[None, :], mask=real[:, None] & channel[None, :],
                        other=0.0).to(tl.float32)
            if HAS_PAD_VALUE:  # a padding frame (not a masked one) reads the pad value
                x = tl.where(((src < 0) | (src >= T_IN))[:, None], pad_value, x)
            acc += x * tl.load(TAPS + c * KS + i, mask=channel, other=0.0)[None, :]
        acc += tl.load(BIAS + c, mask=channel, other=0.0)[None, :]
        if HAS_NORM:
            mean = tl.sum(acc, 1) / C
            centered = tl.where(channel[None, :], acc - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 1) / C + eps)
            acc = (centered * rstd[:, None] * tl.load(NORM_W + c, mask=channel, other=0.0)[None, :]
                   + tl.load(NORM_B + c, mask=channel, other=0.0)[None, :])
        y = acc.to(OUT.dtype.element_ty).to(tl.float32)  # the activation reads the cast value, as in the graph
        y = times_sigmoid(y, y) if SWISH else tl.maximum(y, 0.0)
        tl.store(OUT + (b * T_OUT + t)[:, None] * C + c[None, :], y.to(OUT.dtype.element_ty),
                 mask=(t < T_OUT)[:, None] & channel[None, :])


def frame_tile(rows: int) -> int:
    """Frames per program for ``rows`` output frames in all: more, smaller programs for fewer rows. u2pp's conv module
    (C = 256, k = 8; H200, us): 8 / 16 / 32 frames 3.21 / 3.91 / 5.65 at 257 rows, 7.15 / 6.07 / 6.10 at 4,112,
    22.92 / 19.95 / 16.69 at 16,448."""
    return 8 if rows <= 1024 else 16 if rows <= 8192 else 32


def launch(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor, valid: torch.Tensor | None,
           pad_value: torch.Tensor | None, norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
           kernel_size: int, pad_left: int, pad_right: int, eps: float, activation: str, out_dtype: torch.dtype,
           block_t: int | None = None, num_warps: int = 8) -> torch.Tensor:
    """The kernel on contiguous x (B, T, C), in tiles of ``block_t`` frames (default: ``frame_tile``) on 8 warps."""
    batch, frames_in, channels = x.shape
    frames = frames_in + pad_left + pad_right - kernel_size + 1
    block_t = block_t or frame_tile(planned_size(batch * frames))
    out = torch.empty((batch, frames, channels), dtype=out_dtype, device=x.device)
    launchable(_depthwise_norm_act_kernel)[(triton.cdiv(frames, block_t), batch)](
        x, taps, bias, valid if valid is not None else x, pad_value if pad_value is not None else bias,
        norm_weight if norm_weight is not None else bias, norm_bias if norm_bias is not None else bias, out, frames_in,
        frames, eps, C=channels, CP=triton.next_power_of_2(channels), KS=kernel_size, PAD_LEFT=pad_left,
        BLOCK_T=block_t, HAS_VALID=valid is not None, HAS_PAD_VALUE=pad_value is not None,
        HAS_NORM=norm_weight is not None, SWISH=activation == "swish", num_warps=num_warps)
    return out


def decomposed(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor, valid: torch.Tensor | None,
               pad_value: torch.Tensor | None, norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
               kernel_size: int, pad_left: int, pad_right: int, eps: float, activation: str,
               out_dtype: torch.dtype) -> torch.Tensor:
    """The op through its decomposition (``core.composite.depthwise_norm_act``), on any device."""
    optional = [t for t in (valid, pad_value) if t is not None] + \
        ([norm_weight, norm_bias] if norm_weight is not None else [])
    attrs = {"kernel_size": kernel_size, "pad_left": pad_left, "pad_right": pad_right, "eps": eps,
             "activation": activation, "out_dtype": str(out_dtype).removeprefix("torch."),
             "has_valid": valid is not None, "has_pad_value": pad_value is not None,
             "has_norm": norm_weight is not None}
    return run_decomposition("depthwise_norm_act", [x, taps, bias, *optional], attrs)


def _depthwise_norm_act(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor, valid: torch.Tensor | None,
                        pad_value: torch.Tensor | None, norm_weight: torch.Tensor | None,
                        norm_bias: torch.Tensor | None, kernel_size: int, pad_left: int, pad_right: int, eps: float,
                        activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    run = launch if kernel_available(x.device) else decomposed
    return run(x.contiguous(), taps.contiguous(), bias, valid, pad_value, norm_weight, norm_bias, kernel_size,
               pad_left, pad_right, eps, activation, out_dtype)


def _fake(x, taps, bias, valid, pad_value, norm_weight, norm_bias, kernel_size, pad_left, pad_right, eps, activation,
          out_dtype):
    frames = x.shape[1] + pad_left + pad_right - kernel_size + 1
    return x.new_empty((x.shape[0], frames, x.shape[2]), dtype=out_dtype)


depthwise_norm_act = register_op("depthwise_norm_act", _depthwise_norm_act, _fake)
