from __future__ import annotations

import torch

from core import functional as F
from core.dtype import DataType
from core.module import Module, Parameter
from core.tensor import Tensor


class Conv1d(Module):
    """1-d convolution on (B, C, T); pointwise (k=1), depthwise (groups=C), causal via (k-1, 0) padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int | tuple[int, int] = 0,
                 groups: int = 1, bias: bool = True, dtype: DataType = DataType.float32):
        super().__init__()
        self.padding = padding
        self.groups = groups
        self.weight = Parameter((out_channels, in_channels // groups, kernel_size), dtype)
        self.bias = Parameter((out_channels,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.value if self.bias is not None else None
        return F.conv1d(x, self.weight.value, bias, padding=self.padding, groups=self.groups)


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dtype: DataType = DataType.float32):
        super().__init__()
        self.stride = stride
        self.weight = Parameter((out_channels, in_channels, kernel_size, kernel_size), dtype)
        self.bias = Parameter((out_channels,), dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.value, self.bias.value, stride=self.stride)

    def forward_single_channel(self, x: Tensor) -> Tensor:
        """For ``in_channels == 1``: x (B, T, F) -> the convolution (B, T', F', C), channels last.

        A one-channel k x k convolution has nothing to reduce over channels, so cuDNN runs it slowly and
        writes NCHW that the next convolution must transpose. Here it is a GEMM instead: the k input rows
        of each output frame, (B, T', k*F), gathered by a 1-d convolution with a 0/1 kernel (exact), times
        a banded weight (k*F, F'*C) that holds the kernel where f = s*f' + j (both weights are built from
        constants and the kernel, so the build folds them).
        """
        out_channels, _, k, _ = self.weight.shape
        s, freq = self.stride, x.shape[2]
        out_freq = (freq - k) // s + 1
        dtype = self.weight.dtype.torch
        gather = torch.zeros(k, freq, freq, k, dtype=dtype)  # output channel (i, f) takes x[f] at tap i
        for i in range(k):
            gather[i, :, :, i] = torch.eye(freq, dtype=dtype)
        windows = F.conv1d(F.permute(x, [0, 2, 1]), F.constant(gather.view(k * freq, freq, k)), stride=s)
        windows = F.permute(windows, [0, 2, 1])  # (B, T', k*F): rows i*F + f
        select = torch.zeros(freq * out_freq, k, dtype=dtype)  # [f, f'] x j: 1 where f = s*f' + j
        for f1 in range(out_freq):
            for j in range(k):
                select[(s * f1 + j) * out_freq + f1, j] = 1
        kernel = F.permute(F.view(self.weight.value, [out_channels, k, k]), [2, 1, 0])  # (j, i, C)
        banded = F.matmul(F.constant(select), F.view(kernel, [1, k, k * out_channels]))
        banded = F.permute(F.view(banded, [freq, out_freq, k, out_channels]), [2, 0, 1, 3])  # (i, f, f', C)
        y = F.matmul(windows, F.view(banded, [1, k * freq, out_freq * out_channels]))
        y = F.view(y, [F.shape(y, 0), F.shape(y, 1), out_freq, out_channels])
        return y + self.bias.value
