from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module, Parameter
from core.tensor import Tensor


class Linear(Module):
    """``y = x W^T + b`` with torch's weight layout (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: DataType = DataType.float32):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter((out_features, in_features), dtype)
        self.bias = Parameter((out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.matmul(x, self.weight.value, transpose_b=True)
        return y + self.bias.value if self.bias is not None else y


class WeightOnlyInt8Linear(Module):
    """Linear with int8 weights and a per-output-channel scale: int8 constant -> dequantize -> matmul,
    the plugin-free path TensorRT fuses into a weight-only GEMM. Activations stay in ``dtype``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: DataType = DataType.float16):
        super().__init__()
        self.weight = Parameter((out_features, in_features), DataType.int8)
        self.per_channel_scale = Parameter((out_features,), dtype)
        self.bias = Parameter((out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        weight = F.dequantize(self.weight.value, self.per_channel_scale.value, axis=0)
        y = F.matmul(x, weight, transpose_b=True)
        return y + self.bias.value if self.bias is not None else y
