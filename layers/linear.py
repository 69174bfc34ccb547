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
