"""``Module``, ``ModuleList`` and ``Parameter`` (TensorRT-LLM's module.py / parameter.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from core.dtype import DataType
from core.network import default_net
from core.tensor import Tensor


class Parameter:
    """A named weight with a fixed shape and an explicit dtype (networks are strongly typed)."""

    def __init__(self, shape: Sequence[int], dtype: DataType | str):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = DataType(dtype)
        self.name: str | None = None
        self.raw_value: torch.Tensor | None = None

    def set_value(self, value: torch.Tensor) -> None:
        if tuple(value.shape) != self.shape:
            raise ValueError(f"parameter {self.name!r}: expected shape {list(self.shape)}, got {list(value.shape)}")
        self.raw_value = value.detach().to(self.dtype.torch).contiguous()

    @property
    def value(self) -> Tensor:
        """The parameter as a constant of the network being defined."""
        return default_net().parameter(self)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, {list(self.shape)}, {self.dtype.value})"


class Module:
    """A reusable piece of network definition; attribute names become weight names."""

    def __init__(self) -> None:
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_name", type(self).__name__)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        for store in ("_parameters", "_modules"):
            items = self.__dict__.get(store, {})
            if name in items:
                return items[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __call__(self, *args, **kwargs):
        with default_net().scope(self._name):
            return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} defines no forward")

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                yield (f"{module_name}.{name}" if module_name else name), param

    def assign_names(self, prefix: str = "") -> None:
        """Gives every submodule and parameter its dotted path (the checkpoint key)."""
        for name, module in self.named_modules(prefix):
            object.__setattr__(module, "_name", name or type(module).__name__)
        for name, param in self.named_parameters(prefix):
            param.name = name


class ModuleList(Module):
    """Modules under "0", "1", ...; ``indices`` keeps WeNet's Sequential numbering (conv.0, conv.2)."""

    def __init__(self, modules: Sequence[Module], indices: Sequence[int] | None = None):
        super().__init__()
        for i, module in zip(indices or range(len(modules)), modules):
            self._modules[str(i)] = module

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())
