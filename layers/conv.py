from __future__ import annotations

import torch

from core import functional as F
from core.dtype import DataType
from core.module import Module, Parameter
from core.tensor import Tensor
from layers.linear import linear
from layers.normalization import LayerNorm


class Conv1d(Module):
    """A 1-d convolution with WeNet's keys (weight (C_out, C_in / groups, k), bias), run channels last: the
    conformer's pointwise (k = 1) and depthwise (groups = C) convolutions on (B, T, C) activations."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int | tuple[int, int] = 0,
                 groups: int = 1, bias: bool = True, dtype: DataType = DataType.float32):
        super().__init__()
        self.padding = (padding, padding) if isinstance(padding, int) else padding
        self.weight = Parameter((out_channels, in_channels // groups, kernel_size), dtype)
        self.bias = Parameter((out_channels,), dtype) if bias else None

    def pointwise(self, x: Tensor, activation: str | None = None, out_dtype: DataType | None = None) -> Tensor:
        """A kernel-1 convolution on channels-last x (..., C_in) -> (..., C_out), then ``activation``: a GEMM over all
        rows, as a Linear (``layers.linear.linear``). On (B, C, T) cuDNN runs it as a GEMM over an odd causal length
        (T + k - 1), unaligned."""
        out_channels, in_channels, _ = self.weight.shape
        weight = F.view(self.weight.value, [out_channels, in_channels])
        return linear(x, weight, self.bias.value if self.bias is not None else None, activation, out_dtype)

    def depthwise_norm_act(self, x: Tensor, activation: str, out_dtype: DataType, norm: LayerNorm | None = None,
                           valid: Tensor | None = None, pad_value: Tensor | None = None) -> Tensor:
        """This depthwise convolution, then ``norm``, the cast to ``out_dtype`` and ``activation``, on channels-last x
        (B, T, C) -> (B, T + padding - k + 1, C), fp32 up to the cast; frames where ``valid`` is false read as zero,
        the padding frames as zero or ``pad_value`` (C,) fp32.
        One fused op (``F.depthwise_norm_act``): it stays channels last (cuDNN wants (B, C, T), and the transposes
        there and back took 1.0 of the conv module's 1.3 ms at batch 64 x 10 s, H200)."""
        channels, _, k = self.weight.shape
        f32 = DataType.float32
        taps = F.cast(F.view(self.weight.value, [channels, k]), f32)
        bias = F.cast(self.bias.value, f32) if self.bias is not None else F.constant(torch.zeros(channels))
        return F.depthwise_norm_act(x, taps, bias, padding=self.padding, valid=valid, pad_value=pad_value,
                                    norm=(norm.weight.value, norm.bias.value, norm.eps) if norm is not None else None,
                                    activation=activation, out_dtype=out_dtype)


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dtype: DataType = DataType.float32):
        super().__init__()
        self.stride = stride
        self.weight = Parameter((out_channels, in_channels, kernel_size, kernel_size), dtype)
        self.bias = Parameter((out_channels,), dtype)

    def forward(self, x: Tensor, time_last: bool = False) -> Tensor:
        """x (B, C, T, F) as WeNet's, or with ``time_last`` (B, C, F, T): the kernel's taps are transposed to match."""
        weight = F.permute(self.weight.value, [0, 1, 3, 2]) if time_last else self.weight.value
        return F.conv2d(x, weight, self.bias.value, stride=self.stride)

    def relu_single_channel(self, x: Tensor) -> Tensor:
        """For ``in_channels == 1``: x (B, T, F) -> ReLU(convolution) as (B, F', T', C), channels last.

        A one-channel k x k convolution has nothing to reduce over channels: each output is k² products. cuDNN
        runs it slowly and writes NCHW that the next convolution must transpose. Here one gather collects the k²
        inputs of each output position into a (B, F', T', k² padded to a multiple of 8) tensor, and one aligned GEMM
        with the kernel as a (k², C) matrix writes the output once, channels last, its bias and ReLU applied in the
        GEMM's epilogue (H200, batch 64 x 10 s: 0.5 ms with a separate ReLU and layout pass, against 1.5 ms for
        cuDNN and for a fused sum of k² strided products). The gather's index is a constant per (F', column) plus
        s * F per output frame, so the compiled engine computes it inline in the one kernel that writes the tensor
        (slices of strided windows, concatenated, took 11 kernels: ~0.17 ms at batch 64 x 10 s). The output keeps
        frequency before time, the order the GEMM's rows come in: the next convolution reads it as is, with its
        kernel transposed; splitting the rows back into (T', F') makes torch.export emit a divisibility guard it
        cannot prove, (F', T') it can.
        """
        out_channels, _, k, _ = self.weight.shape
        s, freq = self.stride, x.shape[2]
        out_freq = (freq - k) // s + 1
        padded = -(k * k) // 8 * -8
        column = torch.arange(padded)
        # column c = (i, j) of output (f', t') reads x[b, s t' + i, s f' + j]; a padding column reads tap (0, 0)
        # again, which the kernel's zero padding columns cancel
        offsets = torch.where(column < k * k, (column // k) * freq + column % k, 0)[None, :] + \
            s * torch.arange(out_freq)[:, None]  # (F', k² padded)
        frames = (F.shape(x, 1) - k) // s + 1
        index = F.unsqueeze(F.constant(offsets.to(torch.int32)), 1) + \
            F.unsqueeze(F.unsqueeze(F.arange(frames) * (s * freq), 0), 2)  # (F', T', k² padded)
        taps = F.gather(F.view(x, [F.shape(x, 0), F.shape(x, 1) * freq]), index, 1)  # (B, F', T', k² padded)
        kernel = F.pad(F.view(self.weight.value, [out_channels, k * k]), 1, 0, padded - k * k)  # (C, k² padded)
        return linear(taps, kernel, self.bias.value, "relu")
