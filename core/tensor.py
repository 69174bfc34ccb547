"""The symbolic tensor that layer code manipulates while a network is being defined."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.dtype import DataType

if TYPE_CHECKING:
    from core.network import Network


class Tensor:
    """A value of a network under construction: a name, a dtype and a shape.

    Dynamic dims are -1 in ``shape``; their runtime size is only available as a shape tensor
    (``functional.shape(x, dim)``), never as a Python int, so that no network depends on data.
    """

    def __init__(self, network: Network, name: str, dtype: DataType, shape: Sequence[int]):
        self.network = network
        self.name = name
        self.dtype = DataType(dtype)
        self.shape = tuple(int(d) for d in shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def size(self, dim: int) -> int:
        """Static size of ``dim``, or -1 where it is dynamic."""
        return self.shape[dim]

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.dtype.value}, {list(self.shape)})"

    # Operators are thin aliases of core.functional, imported lazily to avoid an import cycle.
    def __add__(self, other):
        from core import functional as F

        return F.add(self, other)

    def __radd__(self, other):
        from core import functional as F

        return F.add(other, self)

    def __sub__(self, other):
        from core import functional as F

        return F.sub(self, other)

    def __rsub__(self, other):
        from core import functional as F

        return F.sub(other, self)

    def __mul__(self, other):
        from core import functional as F

        return F.mul(self, other)

    def __rmul__(self, other):
        from core import functional as F

        return F.mul(other, self)

    def __truediv__(self, other):
        from core import functional as F

        return F.div(self, other)

    def __floordiv__(self, other):
        from core import functional as F

        return F.floordiv(self, other)

    def __neg__(self):
        from core import functional as F

        return F.neg(self)

    def __lt__(self, other):
        from core import functional as F

        return F.lt(self, other)

    def __gt__(self, other):
        from core import functional as F

        return F.gt(self, other)

    def __and__(self, other):
        from core import functional as F

        return F.logical_and(self, other)

    def __invert__(self):
        from core import functional as F

        return F.logical_not(self)

    def view(self, dims: Sequence) -> Tensor:
        from core import functional as F

        return F.view(self, dims)

    def permute(self, dims: Sequence[int]) -> Tensor:
        from core import functional as F

        return F.permute(self, dims)

    def transpose(self, dim0: int, dim1: int) -> Tensor:
        from core import functional as F

        return F.transpose(self, dim0, dim1)

    def cast(self, dtype: DataType | str) -> Tensor:
        from core import functional as F

        return F.cast(self, dtype)
