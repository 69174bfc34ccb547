from __future__ import annotations

from core.dtype import DataType
from core.module import Module
from core.tensor import Tensor
from layers.linear import Linear


class PositionwiseFeedForward(Module):
    """``w_2(activation(w_1(x)))``: swish in the conformer encoder, relu in the decoder."""

    def __init__(self, dim: int, hidden: int, activation: str, dtype: DataType):
        super().__init__()
        self.activation = activation
        self.w_1 = Linear(dim, hidden, dtype=dtype)
        self.w_2 = Linear(hidden, dim, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.w_1(x, self.activation))
