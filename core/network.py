"""A network under definition: named inputs with dynamic-dim profiles, op nodes, constants, outputs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from core.dtype import DataType
from core.ops import OPS
from core.tensor import Tensor

if TYPE_CHECKING:
    from core.module import Parameter


@dataclass(frozen=True)
class Dim:
    """A dynamic dimension and its optimization profile (inclusive bounds)."""

    name: str
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 0 <= self.min <= self.opt <= self.max:
            raise ValueError(f"dim {self.name!r}: need 0 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass
class InputSpec:
    name: str
    dtype: DataType
    dims: list[int | Dim]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(-1 if isinstance(d, Dim) else d for d in self.dims)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.value,
                "dims": [asdict(d) if isinstance(d, Dim) else d for d in self.dims]}

    @staticmethod
    def from_json(data: dict) -> InputSpec:
        dims = [Dim(**d) if isinstance(d, dict) else d for d in data["dims"]]
        return InputSpec(data["name"], DataType(data["dtype"]), dims)


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict


class Network:
    """The recorded definition of one engine network (what TensorRT calls INetworkDefinition)."""

    def __init__(self, name: str):
        self.name = name
        self.inputs: dict[str, InputSpec] = {}
        self.outputs: dict[str, str] = {}  # output name -> tensor name
        self.nodes: list[Node] = []
        self.tensors: dict[str, tuple[DataType, tuple[int, ...]]] = {}
        self.constants: dict[str, torch.Tensor] = {}
        self._scope: list[str] = []
        self._counter = 0
        self._parameter_tensors: dict[int, Tensor] = {}

    # -- definition -------------------------------------------------------------------------
    def add_input(self, name: str, dtype: DataType | str, dims: Sequence[int | Dim]) -> Tensor:
        if name in self.inputs:
            raise ValueError(f"network {self.name!r} already has an input {name!r}")
        spec = InputSpec(name, DataType(dtype), list(dims))
        for d in spec.dims:
            if isinstance(d, Dim):
                known = self.dim(d.name)
                if known is not None and known != d:
                    raise ValueError(f"dim {d.name!r} declared twice with different profiles")
        self.inputs[name] = spec
        return self._tensor(name, spec.dtype, spec.shape)

    def dim(self, name: str) -> Dim | None:
        for spec in self.inputs.values():
            for d in spec.dims:
                if isinstance(d, Dim) and d.name == name:
                    return d
        return None

    def mark_output(self, tensor: Tensor, name: str) -> None:
        if tensor.network is not self:
            raise ValueError(f"output {name!r} belongs to another network")
        if name in self.outputs:
            raise ValueError(f"network {self.name!r} already has an output {name!r}")
        self.outputs[name] = tensor.name

    def constant(self, value: torch.Tensor, name: str | None = None) -> Tensor:
        """A weight or table baked into the network; its dtype is the value's, exactly."""
        name = name or self._fresh("constant")
        if name in self.constants:
            raise ValueError(f"constant {name!r} defined twice")
        value = value.detach().contiguous()
        self.constants[name] = value
        return self._tensor(name, DataType.from_torch(value.dtype), tuple(value.shape))

    def tensor(self, name: str) -> Tensor:
        """An existing tensor (input, constant or node output) by name."""
        dtype, shape = self.tensors[name]
        return Tensor(self, name, dtype, shape)

    def parameter(self, param: Parameter) -> Tensor:
        """The constant holding a Parameter's value, created on first use."""
        tensor = self._parameter_tensors.get(id(param))
        if tensor is None:
            if param.raw_value is None:
                raise ValueError(f"parameter {param.name!r} has no value: load the weights before defining networks")
            tensor = self.constant(param.raw_value, param.name)
            self._parameter_tensors[id(param)] = tensor
        return tensor

    def emit(self, kind: str, inputs: Sequence[Tensor], **attrs) -> list[Tensor]:
        """Record one node of op ``kind``; returns its outputs with inferred dtypes and shapes."""
        for t in inputs:
            if t.network is not self:
                raise ValueError(f"{kind}: input {t.name!r} belongs to another network")
        specs = OPS[kind].infer(*inputs, **attrs)
        outputs = [self._tensor(self._fresh(attrs.get("op", kind)), dtype, shape) for dtype, shape in specs]
        self.nodes.append(Node(kind, [t.name for t in inputs], [t.name for t in outputs], attrs))
        return outputs

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Names the tensors created inside after the module that creates them."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _fresh(self, op: str) -> str:
        self._counter += 1
        prefix = self._scope[-1] + "/" if self._scope else ""
        return f"{prefix}{op}_{self._counter}"

    def _tensor(self, name: str, dtype: DataType, shape: tuple[int, ...]) -> Tensor:
        self.tensors[name] = (dtype, tuple(shape))
        return Tensor(self, name, dtype, shape)

    # -- optimization -----------------------------------------------------------------------
    def fold_constants(self) -> int:
        """Evaluates, once at build time, every node whose inputs are all constants (weights concatenated
        for a fused GEMM, casts of weights, ...), replacing it by its result; drops the constants nothing
        reads any more. Shape (int64) values stay nodes: they belong to the shape path. Returns the
        number of nodes folded."""
        kept, folded = [], 0
        for node in self.nodes:
            op = OPS[node.op]
            foldable = node.inputs and all(n in self.constants for n in node.inputs) and not getattr(
                op, "needs_device", False) and all(self.tensors[n][0] != DataType.int64 for n in node.outputs)
            if not foldable:
                kept.append(node)
                continue
            inputs = [self.constants[n] for n in node.inputs]
            result = op.torch(*inputs, **node.attrs)
            shared = {t.untyped_storage().data_ptr() for t in inputs}
            for name, value in zip(node.outputs, result if isinstance(result, tuple) else (result,)):
                # a view of an input is copied: two folded views of one constant would share memory, which the
                # saved artifact (safetensors) refuses
                value = value.contiguous()
                self.constants[name] = value.clone() if value.untyped_storage().data_ptr() in shared else value
            folded += 1
        self.nodes = kept
        used = {n for node in kept for n in node.inputs} | set(self.outputs.values())
        self.constants = {k: v for k, v in self.constants.items() if k in used}
        return folded

    # -- serialization ----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "name": self.name,
            "inputs": [spec.to_json() for spec in self.inputs.values()],
            "outputs": self.outputs,
            "nodes": [[n.op, n.inputs, n.outputs, n.attrs] for n in self.nodes],
            "tensors": {k: [d.value, list(s)] for k, (d, s) in self.tensors.items()},
            "constants": sorted(self.constants),
        })

    @staticmethod
    def from_json(text: str, constants: dict[str, torch.Tensor]) -> Network:
        data = json.loads(text)
        net = Network(data["name"])
        net.inputs = {d["name"]: InputSpec.from_json(d) for d in data["inputs"]}
        net.outputs = data["outputs"]
        net.nodes = [Node(op, ins, outs, attrs) for op, ins, outs, attrs in data["nodes"]]
        unknown = sorted({n.op for n in net.nodes} - set(OPS))
        if unknown:
            raise ValueError(f"network {net.name!r} uses ops this version does not have: {unknown}; it was built by "
                             "another version of this code: rebuild the engines with build.py")
        net.tensors = {k: (DataType(d), tuple(s)) for k, (d, s) in data["tensors"].items()}
        missing = sorted(set(data["constants"]) - set(constants))
        if missing:
            raise ValueError(f"network {net.name!r}: constants missing from its artifact: {missing[:5]}")
        net.constants = {k: constants[k] for k in data["constants"]}
        return net


_current: list[Network] = []


def default_net() -> Network:
    if not _current:
        raise RuntimeError("no network is being defined: wrap the definition in `with net_guard(network):`")
    return _current[-1]


@contextlib.contextmanager
def net_guard(network: Network) -> Iterator[Network]:
    """Makes ``network`` the one that functional ops record into."""
    _current.append(network)
    try:
        yield network
    finally:
        _current.pop()


def save_network(network: Network, path: str) -> None:
    """One artifact per network: its constants as safetensors, its definition in the metadata."""
    from safetensors.torch import save_file

    save_file(network.constants, path, metadata={"network": network.to_json()})


def load_network(path: str) -> Network:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        if "network" not in metadata:
            raise ValueError(f"{path} is not a network artifact (no 'network' metadata)")
        constants = {k: f.get_tensor(k) for k in f.keys()}
    return Network.from_json(metadata["network"], constants)
