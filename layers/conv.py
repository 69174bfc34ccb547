from __future__ import annotations

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
