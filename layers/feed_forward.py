from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module
from core.tensor import Tensor
from layers.linear import Linear
from layers.normalization import LayerNorm


class PositionwiseFeedForward(Module):
    """``w_2(activation(w_1(x)))``: swish in the conformer encoder, relu in the decoder."""

    def __init__(self, dim: int, hidden: int, activation: str, dtype: DataType):
        super().__init__()
        self.activation = activation
        self.w_1 = Linear(dim, hidden, dtype=dtype)
        self.w_2 = Linear(hidden, dim, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(F.activation(self.w_1(x), self.activation))

    def add_to(self, x: Tensor, norm: LayerNorm, scale: float) -> Tensor:
        """``x + scale * self(norm(x))`` for the fp32 residual stream ``x`` as two fused GEMMs (``F.gemm``): the
        norm in the first one's prologue and the activation in its epilogue, the scaled add in the second's."""
        h = F.gemm(x, self.w_1.weight.value, self.w_1.bias.value, norm=(norm.weight.value, norm.bias.value, norm.eps),
                   activation=self.activation)
        return F.gemm(h, self.w_2.weight.value, self.w_2.bias.value, residual=x, residual_scale=scale)
