from __future__ import annotations

import math

import torch

from core import functional as F
from core.dtype import DataType
from core.module import Module, Parameter
from core.network import default_net
from core.tensor import Tensor


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: DataType = DataType.float32):
        super().__init__()
        self.weight = Parameter((num_embeddings, embedding_dim), dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return F.gather(self.weight.value, ids, 0)


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """WeNet's position table (max_len, dim) in float32: sin on even, cos on odd columns."""
    pe = torch.zeros(max_len, dim)
    position = torch.arange(0, max_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class PositionalEncoding(Module):
    """WeNet's absolute encoding: ``x * sqrt(d) + pe[offset : offset + T]`` (decoder input).

    With ``add=False`` it is RelPositionalEncoding: x is only scaled and the whole table (1, max_len,
    dim) is returned as the keys' position embedding (WeNet has no rel_shift, so key j has row j):
    each attention layer projects the table, a constant folded at build time, and takes its first
    T rows, instead of projecting T rows in every call.
    """

    def __init__(self, dim: int, max_len: int, add: bool = True, dtype: DataType = DataType.float32):
        super().__init__()
        self.dim = dim
        self.max_len = max_len
        self.add = add
        self.dtype = dtype

    def table(self) -> Tensor:
        net = default_net()
        name = f"{self._name}.pe"
        if name not in net.constants:
            # Built in fp32 like WeNet, then cast once to the network dtype.
            return net.constant(sinusoid_table(self.max_len, self.dim).to(self.dtype.torch), name)
        return net.tensor(name)

    def positions(self, offset: int | Tensor, length: Tensor) -> Tensor:
        """(1, length, dim) rows of the table starting at ``offset``."""
        return F.unsqueeze(F.slice(self.table(), 0, offset, length), 0)

    def forward(self, x: Tensor, offset: int | Tensor = 0, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``positions`` (B, T) int32: each entry's own row of the table (a trie's depths) instead of ``offset``."""
        x = x * math.sqrt(self.dim)
        if not self.add:
            return x, F.unsqueeze(self.table(), 0)
        pos = F.gather(self.table(), positions, 0) if positions is not None else self.positions(offset, F.shape(x, 1))
        return x + pos, pos
