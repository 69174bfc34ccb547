"""The TensorRT lowering: a recorded Network -> strongly typed INetworkDefinition -> serialized ``.plan``.

Every op lowers through its ``tensorrt`` rule in ``core/ops.py``; this module supplies the
``LoweringContext`` those rules use, the optimization profile (one per network, from the inputs'
``Dim``s), the builder configuration, and ``TensorRTEngine``, which runs a plan with torch for
device memory and streams. ``trt`` is passed in wherever it is used, so that the API-conformance
check (``tools/check_tensorrt_api.py``) can run all of this against a recording stand-in.
"""

from __future__ import annotations

from typing import Any

import torch

from core.composite import decomposition
from core.dtype import DataType
from core.network import InputSpec, Network
from core.ops import OPS

TRT_DTYPE_NAMES = {DataType.float32: "float32", DataType.float16: "float16", DataType.bfloat16: "bfloat16",
                   DataType.int8: "int8", DataType.int32: "int32", DataType.int64: "int64", DataType.bool: "bool"}
WORKSPACE_BYTES = 4 << 30


class TensorRTUnavailable(RuntimeError):
    """TensorRT was asked for where it cannot be imported; the message says what to install."""


def import_tensorrt():
    """The ``tensorrt`` module, or an error that says what to install."""
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailable(
            "the TensorRT backend needs TensorRT 10.x or 11.x with NVIDIA's libraries (for example "
            "`pip install tensorrt-cu12` from NVIDIA's index) and a CUDA GPU; use --backend torch otherwise "
            f"({e})") from e
    return tensorrt


def tensorrt_usable() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return torch.cuda.is_available()


def profile_shapes(spec: InputSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of one input for its optimization profile."""
    pick = [(d, d, d) if isinstance(d, int) else (d.min, d.opt, d.max) for d in spec.dims]
    return tuple(p[0] for p in pick), tuple(p[1] for p in pick), tuple(p[2] for p in pick)


def slice_plan(rank: int, axis: int) -> tuple[list[tuple], list[tuple]]:
    """How the full start and size vectors of a one-axis slice are assembled from shape-tensor parts:
    ("zeros", n), ("begin",), ("shape", first, count) of the input's shape, ("length",)."""
    before, after = axis, rank - axis - 1
    starts = ([("zeros", before)] if before else []) + [("begin",)] + ([("zeros", after)] if after else [])
    sizes = ([("shape", 0, before)] if before else []) + [("length",)] + ([("shape", axis + 1, after)] if after else [])
    return starts, sizes


def conv1d_as_2d(weight_shape: tuple[int, ...], stride: list[int], pre_padding: list[int], post_padding: list[int],
                 dilation: list[int]) -> tuple[tuple[int, ...], list[int], list[int], list[int], list[int]]:
    """A 1-d convolution as a 2-d one over (B, C, T, 1): weight (out, in/g, k) -> (out, in/g, k, 1), and the
    stride, paddings and dilation with the unit second spatial dim appended."""
    return (*weight_shape, 1), [stride[0], 1], [pre_padding[0], 0], [post_padding[0], 0], [dilation[0], 1]


class LoweringContext:
    """What an op's ``tensorrt`` rule works with: the module, the network, its inputs' specs, helpers."""

    def __init__(self, trt, network, graph: Network):
        self.trt = trt
        self.network = network
        self.graph = graph
        self.values: dict[str, Any] = {}
        self.keep_alive: list[torch.Tensor] = []  # host memory behind trt.Weights, until the build ends
        self._specs: list[tuple[DataType, tuple[int, ...]]] = []

    def dtype(self, dtype: DataType):
        return getattr(self.trt, TRT_DTYPE_NAMES[dtype])

    def spec(self, index: int) -> tuple[DataType, tuple[int, ...]]:
        return self._specs[index]

    def rank(self, index: int) -> int:
        return len(self._specs[index][1])

    def output(self, layer, index: int = 0):
        return layer.get_output(index)

    def constant(self, value: torch.Tensor):
        """A build-time constant with exactly ``value``'s dtype (strongly typed networks take no casts here)."""
        value = value.detach().contiguous().cpu()
        self.keep_alive.append(value)
        weights = self.trt.Weights(self.dtype(DataType.from_torch(value.dtype)), value.data_ptr(), value.numel())
        return self.output(self.network.add_constant(self.trt.Dims(tuple(value.shape)), weights))

    def int64(self, values: list[int]):
        return self.constant(torch.tensor(values, dtype=torch.int64))

    def scalar(self, value: float, dtype: DataType, rank: int):
        return self.constant(torch.full((1,) * rank, value, dtype=dtype.torch))

    def reshape(self, x, shape: tuple[int, ...]):
        layer = self.network.add_shuffle(x)
        layer.reshape_dims = self.trt.Dims(shape)
        return self.output(layer)

    def dim(self, x, axis: int):
        """One dim of ``x`` as an int64 (1,) shape tensor."""
        return self._shape_part(self.output(self.network.add_shape(x)), axis, 1)

    def _shape_part(self, shape, start: int, size: int):
        layer = self.network.add_slice(shape, self.trt.Dims([start]), self.trt.Dims([size]), self.trt.Dims([1]))
        return self.output(layer)

    def slice_along(self, x, axis: int, begin, length, fill: float | None = None):
        """``x`` narrowed to ``[begin, begin + length)`` along ``axis`` (begin may be negative with ``fill``)."""
        rank = self.rank(0)
        shape = self.output(self.network.add_shape(x))
        parts = {"zeros": lambda n: self.int64([0] * n), "begin": lambda: begin, "length": lambda: length,
                 "shape": lambda first, count: self._shape_part(shape, first, count)}
        starts, sizes = ([parts[kind](*args) for kind, *args in plan] for plan in slice_plan(rank, axis))
        layer = self.network.add_slice(x, self.trt.Dims([0] * rank), self.trt.Dims([1] * rank),
                                       self.trt.Dims([1] * rank))
        layer.set_input(1, self._concat(starts))
        layer.set_input(2, self._concat(sizes))
        if fill is not None:
            layer.mode = self.trt.SampleMode.FILL
            layer.set_input(4, self.scalar(fill, self.spec(0)[0], 0))
        return self.output(layer)

    def _concat(self, parts: list):
        if len(parts) == 1:
            return parts[0]
        layer = self.network.add_concatenation(parts)
        layer.axis = 0
        return self.output(layer)

    def value(self, name: str):
        if name not in self.values and name in self.graph.constants:
            self.values[name] = self.constant(self.graph.constants[name])
            self.values[name].name = name
        return self.values[name]


def lower_nodes(ctx: LoweringContext, prefix: str = "") -> None:
    """Adds the layers of every node of ``ctx.graph``; a fused (``composite``) op adds those of its
    decomposition, named under the fused node's first output."""
    graph = ctx.graph
    for node in graph.nodes:
        inputs = [ctx.value(n) for n in node.inputs]
        specs = [graph.tensors[n] for n in node.inputs]
        op = OPS[node.op]
        if getattr(op, "composite", False):
            sub = LoweringContext(ctx.trt, ctx.network, decomposition(node.op, specs, node.attrs))
            sub.keep_alive = ctx.keep_alive
            sub.values = {f"input{i}": value for i, value in enumerate(inputs)}
            lower_nodes(sub, prefix=f"{prefix}{node.outputs[0]}/")
            result = tuple(sub.value(sub.graph.outputs[f"output{i}"]) for i in range(len(sub.graph.outputs)))
        else:
            ctx._specs = specs
            result = op.tensorrt(ctx, *inputs, **node.attrs)
        for name, tensor in zip(node.outputs, result if isinstance(result, tuple) else (result,)):
            tensor.name = prefix + name
            ctx.values[name] = tensor


def define_network(trt, builder, graph: Network) -> tuple[Any, LoweringContext]:
    """The strongly typed INetworkDefinition of ``graph``."""
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    ctx = LoweringContext(trt, network, graph)
    for name, spec in graph.inputs.items():
        ctx.values[name] = network.add_input(name, ctx.dtype(spec.dtype), trt.Dims(spec.shape))
    lower_nodes(ctx)
    for output_name, tensor_name in graph.outputs.items():
        tensor = ctx.value(tensor_name)
        if tensor_name in graph.inputs or tensor_name in graph.constants:
            tensor = ctx.output(network.add_identity(tensor))
        tensor.name = output_name
        network.mark_output(tensor)
    return network, ctx


def configure(trt, builder, graph: Network, timing_cache: bytes = b"", workspace: int = WORKSPACE_BYTES):
    """Builder config: one optimization profile from the inputs' dims, workspace, timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    profile = builder.create_optimization_profile()
    for name, spec in graph.inputs.items():
        profile.set_shape(name, *(trt.Dims(s) for s in profile_shapes(spec)))
    config.add_optimization_profile(profile)
    config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    return config


def build_plan(graph: Network, timing_cache: bytes = b"") -> tuple[bytes, bytes]:
    """(serialized engine, updated timing cache)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, ctx = define_network(trt, builder, graph)
    config = configure(trt, builder, graph, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build network {graph.name!r} (see the log above)")
    del ctx  # the weights' host memory may go once the plan exists
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def tensorrt_version() -> str:
    return import_tensorrt().__version__


class TensorRTEngine:
    """A deserialized plan on one CUDA device; called like ``TorchEngine`` with a dict of tensors."""

    def __init__(self, plan: bytes, device: str | torch.device = "cuda", trt=None):
        self.trt = trt or import_tensorrt()
        self.device = torch.device(device)
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the plan (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.OUTPUT]
        to_torch = {getattr(self.trt, name): dtype.torch for dtype, name in TRT_DTYPE_NAMES.items()}
        self.output_dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in self.outputs}
        self._empty = torch.empty(1, dtype=torch.uint8, device=self.device)  # an address for zero-size tensors

    def _address(self, t: torch.Tensor) -> int:
        return t.data_ptr() if t.numel() else self._empty.data_ptr()

    def __call__(self, inputs: dict[str, torch.Tensor], stream: int | None = None) -> dict[str, torch.Tensor]:
        stream = torch.cuda.current_stream(self.device).cuda_stream if stream is None else stream
        inputs = {k: v.to(self.device).contiguous() for k, v in inputs.items()}
        for name, value in inputs.items():
            self.context.set_input_shape(name, tuple(value.shape))
            self.context.set_tensor_address(name, self._address(value))
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.output_dtypes[name], device=self.device)
            self.context.set_tensor_address(name, self._address(outputs[name]))
        if not self.context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execution failed (see the log above)")
        return outputs
