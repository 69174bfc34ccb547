from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module, Parameter
from core.tensor import Tensor


class LayerNorm(Module):
    """LayerNorm over the last dim, always computed in fp32 (weights fp32); the output has ``out_dtype``
    (default: the input's)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter((dim,), DataType.float32)
        self.bias = Parameter((dim,), DataType.float32)

    def forward(self, x: Tensor, out_dtype: DataType | None = None) -> Tensor:
        y = F.layer_norm(F.cast(x, DataType.float32), self.weight.value, self.bias.value, self.eps)
        return F.cast(y, out_dtype or x.dtype)
