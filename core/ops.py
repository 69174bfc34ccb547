"""The op table: one entry per op of the network-definition API.

Each entry is a class with
- ``infer(*inputs, **attrs)``: checks input dtypes/ranks (networks are strongly typed: no
  implicit promotion) and returns the ``(dtype, shape)`` of each output, -1 for a dynamic dim;
- ``torch(*inputs, **attrs)``: the PyTorch lowering, on torch tensors;
- ``tensorrt(ctx, *inputs, **attrs)``: the TensorRT lowering, on ITensors of a strongly typed
  INetworkDefinition; ``ctx`` (``core.tensorrt_backend.LoweringContext``) gives the ``trt`` module,
  the network, the node's input specs and helpers for constants and shape vectors.

``inputs`` are tensors (anything with ``dtype`` and ``shape`` for ``infer``); ``attrs`` are
JSON values, so a network serializes to JSON. Layer code never calls this module: it calls
``core.functional``, which records nodes that name these ops.

Integer data is int32; int64 is reserved for shape tensors (rank 1, from ``shape`` and
``shape_constant``, combined by binary/concat/slice ops). Shape tensors lower in PyTorch to
Python lists of ints, as TensorRT keeps shape tensors on the host: shape arithmetic never
touches the device and stays symbolic under ``torch.export``. Ops that create a tensor from
nothing (``arange``) set ``needs_device`` and receive the target ``device``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from core.dtype import DataType

Spec = tuple[DataType, tuple[int, ...]]

OPS: dict[str, Any] = {}


def register(cls):
    OPS[cls.name] = cls
    return cls


class OpError(ValueError):
    """A network-definition mistake: wrong dtype, rank or shape for an op."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise OpError(message)


def _same_dtype(op: str, *tensors) -> DataType:
    dtypes = {t.dtype for t in tensors}
    _require(len(dtypes) == 1, f"{op}: inputs must share one dtype (strongly typed), got {sorted(d.value for d in dtypes)}")
    return tensors[0].dtype


def broadcast_dim(a: int, b: int, op: str) -> int:
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if a == -1:
        return b
    if b == -1:
        return a
    raise OpError(f"{op}: dims {a} and {b} do not broadcast")


def broadcast_shape(op: str, *shapes: Sequence[int]) -> tuple[int, ...]:
    ranks = {len(s) for s in shapes}
    _require(len(ranks) == 1, f"{op}: inputs must have equal rank, got {[list(s) for s in shapes]}")
    out = list(shapes[0])
    for s in shapes[1:]:
        out = [broadcast_dim(a, b, op) for a, b in zip(out, s)]
    return tuple(out)


def _axis(dim: int, rank: int) -> int:
    _require(-rank <= dim < rank, f"dim {dim} out of range for rank {rank}")
    return dim % rank


_BINARY: dict[str, Callable] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "floordiv": torch.floor_divide,
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "lt": torch.lt,
    "gt": torch.gt,
    "eq": torch.eq,
    "and": torch.logical_and,
    "or": torch.logical_or,
}
_TRT_BINARY = {"add": "SUM", "sub": "SUB", "mul": "PROD", "div": "DIV", "floordiv": "FLOOR_DIV", "pow": "POW",
               "maximum": "MAX", "minimum": "MIN", "lt": "LESS", "gt": "GREATER", "eq": "EQUAL", "and": "AND",
               "or": "OR"}
_HOST_BINARY: dict[str, Callable] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "floordiv": lambda a, b: a // b,
}
_COMPARISONS = {"lt", "gt", "eq"}
_LOGICAL = {"and", "or"}


@register
class Binary:
    name = "binary"

    @staticmethod
    def infer(a, b, *, op: str) -> list[Spec]:
        _require(op in _BINARY, f"unknown binary op {op!r}")
        dtype = _same_dtype(op, a, b)
        if op in _LOGICAL:
            _require(dtype == DataType.bool, f"{op} needs bool inputs")
        if op in ("floordiv",):
            _require(not dtype.is_float, "floordiv is for integer (shape) arithmetic")
        out = DataType.bool if op in _COMPARISONS else dtype
        return [(out, broadcast_shape(op, a.shape, b.shape))]

    @staticmethod
    def torch(a, b, *, op: str):
        if isinstance(a, list):  # shape arithmetic on the host
            if len(a) < len(b):
                a = a * len(b)
            if len(b) < len(a):
                b = b * len(a)
            return [_HOST_BINARY[op](x, y) for x, y in zip(a, b)]
        return _BINARY[op](a, b)

    @staticmethod
    def tensorrt(ctx, a, b, *, op: str):
        kind = getattr(ctx.trt.ElementWiseOperation, _TRT_BINARY[op])
        return ctx.output(ctx.network.add_elementwise(a, b, kind))

_UNARY: dict[str, Callable] = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "neg": torch.neg,
    "abs": torch.abs,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "not": torch.logical_not,
}


_TRT_ACTIVATION = {"sigmoid": "SIGMOID", "relu": "RELU", "tanh": "TANH"}


@register
class Unary:
    name = "unary"

    @staticmethod
    def infer(x, *, op: str) -> list[Spec]:
        _require(op in _UNARY, f"unknown unary op {op!r}")
        if op == "not":
            _require(x.dtype == DataType.bool, "not needs a bool input")
        elif op not in ("neg", "abs"):
            _require(x.dtype.is_float, f"{op} needs a float input, got {x.dtype.value}")
        return [(x.dtype, x.shape)]

    @staticmethod
    def torch(x, *, op: str):
        return _UNARY[op](x)

    @staticmethod
    def tensorrt(ctx, x, *, op: str):
        if op in _TRT_ACTIVATION:
            return ctx.output(ctx.network.add_activation(x, getattr(ctx.trt.ActivationType, _TRT_ACTIVATION[op])))
        return ctx.output(ctx.network.add_unary(x, getattr(ctx.trt.UnaryOperation, op.upper())))

@register
class Cast:
    name = "cast"

    @staticmethod
    def infer(x, *, dtype: str) -> list[Spec]:
        _require(x.dtype != DataType.int64 and DataType(dtype) != DataType.int64,
                 "cast: int64 is reserved for shape values, which stay on the host")
        return [(DataType(dtype), x.shape)]

    @staticmethod
    def torch(x, *, dtype: str):
        return x.to(DataType(dtype).torch)

    @staticmethod
    def tensorrt(ctx, x, *, dtype: str):
        return ctx.output(ctx.network.add_cast(x, ctx.dtype(DataType(dtype))))

@register
class Where:
    name = "where"

    @staticmethod
    def infer(cond, a, b) -> list[Spec]:
        _require(cond.dtype == DataType.bool, "where: condition must be bool")
        dtype = _same_dtype("where", a, b)
        return [(dtype, broadcast_shape("where", cond.shape, a.shape, b.shape))]

    @staticmethod
    def torch(cond, a, b):
        return torch.where(cond, a, b)

    @staticmethod
    def tensorrt(ctx, cond, a, b):
        return ctx.output(ctx.network.add_select(cond, a, b))

@register
class MatMul:
    """``a @ b`` (either transposed); ``out_dtype`` float32 with half inputs: products accumulated and
    returned in fp32, never rounded to the inputs' dtype. PyTorch lowering: cuBLAS, except a half GEMM with a
    weight over few planned rows (``plugins.split_k``)."""

    name = "matmul"

    @staticmethod
    def infer(a, b, *, transpose_a: bool = False, transpose_b: bool = False, out_dtype: str | None = None) -> list[Spec]:
        dtype = _same_dtype("matmul", a, b)
        _require(dtype.is_float, "matmul needs float inputs")
        _require(out_dtype in (None, dtype.value, "float32"), f"matmul: out_dtype {out_dtype} from {dtype.value} inputs")
        _require(a.ndim == b.ndim and a.ndim >= 2, f"matmul: equal ranks >= 2 needed, got {a.shape} and {b.shape}")
        m, ka = (a.shape[-1], a.shape[-2]) if transpose_a else (a.shape[-2], a.shape[-1])
        kb, n = (b.shape[-1], b.shape[-2]) if transpose_b else (b.shape[-2], b.shape[-1])
        _require(ka == kb or -1 in (ka, kb), f"matmul: inner dims {ka} and {kb} differ")
        batch = broadcast_shape("matmul", a.shape[:-2], b.shape[:-2])
        return [(DataType(out_dtype) if out_dtype else dtype, (*batch, m, n))]

    @staticmethod
    def torch(a, b, *, transpose_a: bool = False, transpose_b: bool = False, out_dtype: str | None = None):
        if transpose_a:
            a = a.transpose(-1, -2)
        if transpose_b:
            b = b.transpose(-1, -2)
        out = getattr(torch, out_dtype) if out_dtype else a.dtype
        if all(s == 1 for s in b.shape[:-2]):  # a shared weight: one GEMM over all rows of a, not a batched one
            b = b.reshape(b.shape[-2:])
        if out == a.dtype:
            from plugins import split_k

            # few rows (a batch-1 program's): narrow tiles, a long K split, the partial products summed after
            return split_k.matmul(a, b) if split_k.takes(a, b) else torch.matmul(a, b)
        if a.is_cuda and b.ndim == 2:  # one cuBLAS GEMM with fp32 output
            flat = torch.ops.aten.mm.dtype(a.reshape(-1, a.shape[-1]), b, out)
            return flat.view(*a.shape[:-1], b.shape[-1])
        return torch.matmul(a.to(out), b.to(out))  # half products are exact in fp32: the same arithmetic

    @staticmethod
    def tensorrt(ctx, a, b, *, transpose_a: bool = False, transpose_b: bool = False, out_dtype: str | None = None):
        if out_dtype and DataType(out_dtype) != ctx.spec(0)[0]:  # strongly typed: the GEMM runs in out_dtype
            a, b = (ctx.output(ctx.network.add_cast(t, ctx.dtype(DataType(out_dtype)))) for t in (a, b))
        ops = ctx.trt.MatrixOperation
        return ctx.output(ctx.network.add_matrix_multiply(a, ops.TRANSPOSE if transpose_a else ops.NONE,
                                                          b, ops.TRANSPOSE if transpose_b else ops.NONE))

@register
class Softmax:
    name = "softmax"

    @staticmethod
    def infer(x, *, dim: int, log: bool = False) -> list[Spec]:
        _require(x.dtype.is_float, "softmax needs a float input")
        _axis(dim, x.ndim)
        return [(x.dtype, x.shape)]

    @staticmethod
    def torch(x, *, dim: int, log: bool = False):
        return torch.log_softmax(x, dim) if log else torch.softmax(x, dim)

    @staticmethod
    def tensorrt(ctx, x, *, dim: int, log: bool = False):
        axes = 1 << _axis(dim, ctx.rank(0))
        if not log:
            layer = ctx.network.add_softmax(x)
            layer.axes = axes
            return ctx.output(layer)
        # x - max - log(sum(exp(x - max))): log(softmax) would underflow to -inf for unlikely labels.
        net, trt = ctx.network, ctx.trt
        peak = ctx.output(net.add_reduce(x, trt.ReduceOperation.MAX, axes, True))
        shifted = ctx.output(net.add_elementwise(x, peak, trt.ElementWiseOperation.SUB))
        total = ctx.output(net.add_reduce(ctx.output(net.add_unary(shifted, trt.UnaryOperation.EXP)),
                                          trt.ReduceOperation.SUM, axes, True))
        log_total = ctx.output(net.add_unary(total, trt.UnaryOperation.LOG))
        return ctx.output(net.add_elementwise(shifted, log_total, trt.ElementWiseOperation.SUB))

@register
class Reduce:
    name = "reduce"

    @staticmethod
    def infer(x, *, op: str, dims: list[int], keepdim: bool) -> list[Spec]:
        _require(op in ("sum", "max", "min", "mean"), f"unknown reduction {op!r}")
        axes = {_axis(d, x.ndim) for d in dims}
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keepdim else [
            d for i, d in enumerate(x.shape) if i not in axes]
        return [(x.dtype, tuple(shape))]

    @staticmethod
    def torch(x, *, op: str, dims: list[int], keepdim: bool):
        if op == "sum":
            return torch.sum(x, dim=dims, keepdim=keepdim)
        if op == "mean":
            return torch.mean(x, dim=dims, keepdim=keepdim)
        return torch.amax(x, dim=dims, keepdim=keepdim) if op == "max" else torch.amin(x, dim=dims, keepdim=keepdim)

    @staticmethod
    def tensorrt(ctx, x, *, op: str, dims: list[int], keepdim: bool):
        axes = 0
        for d in dims:
            axes |= 1 << _axis(d, ctx.rank(0))
        kind = getattr(ctx.trt.ReduceOperation, {"mean": "AVG"}.get(op, op.upper()))
        return ctx.output(ctx.network.add_reduce(x, kind, axes, keepdim))

@register
class LayerNorm:
    name = "layer_norm"

    @staticmethod
    def infer(x, weight, bias, *, eps: float) -> list[Spec]:
        dtype = _same_dtype("layer_norm", x, weight, bias)
        _require(dtype.is_float, "layer_norm needs float inputs")
        _require(weight.shape == (x.shape[-1],) == bias.shape, f"layer_norm: weight/bias must be ({x.shape[-1]},)")
        return [(dtype, x.shape)]

    @staticmethod
    def torch(x, weight, bias, *, eps: float):
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    @staticmethod
    def tensorrt(ctx, x, weight, bias, *, eps: float):
        rank = ctx.rank(0)
        scale_shape = (1,) * (rank - 1) + (ctx.spec(1)[1][0],)
        layer = ctx.network.add_normalization(x, ctx.reshape(weight, scale_shape), ctx.reshape(bias, scale_shape),
                                              1 << (rank - 1))
        layer.epsilon = eps
        return ctx.output(layer)

@register
class Convolution:
    """N-d convolution (1-d on (B, C, T), 2-d on (B, C, H, W)); padding may be asymmetric."""

    name = "convolution"

    @staticmethod
    def infer(x, weight, *bias, stride: list[int], pre_padding: list[int], post_padding: list[int],
              dilation: list[int], groups: int) -> list[Spec]:
        dtype = _same_dtype("convolution", x, weight, *bias)
        spatial = len(stride)
        _require(x.ndim == spatial + 2 and weight.ndim == spatial + 2, "convolution: rank mismatch")
        out_ch, in_per_group = weight.shape[:2]
        _require(x.shape[1] == in_per_group * groups,
                 f"convolution: {x.shape[1]} input channels, weight expects {in_per_group * groups}")
        dims = []
        for i in range(spatial):
            size = x.shape[2 + i]
            k = (weight.shape[2 + i] - 1) * dilation[i] + 1
            dims.append(-1 if size == -1 else (size + pre_padding[i] + post_padding[i] - k) // stride[i] + 1)
        return [(dtype, (x.shape[0], out_ch, *dims))]

    @staticmethod
    def torch(x, weight, *bias, stride, pre_padding, post_padding, dilation, groups):
        symmetric = pre_padding == post_padding
        if not symmetric:
            pads = []
            for pre, post in zip(reversed(pre_padding), reversed(post_padding)):
                pads += [pre, post]
            x = torch.nn.functional.pad(x, pads)
        if len(stride) == 1:
            conv = torch.nn.functional.conv1d
        else:  # channels-last: the layout cuDNN's and Inductor's fast 2-d convolutions use, with no transposes
            conv = torch.nn.functional.conv2d
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        return conv(x, weight, bias[0] if bias else None, stride, pre_padding if symmetric else 0, dilation, groups)

    @staticmethod
    def tensorrt(ctx, x, weight, *bias, stride, pre_padding, post_padding, dilation, groups):
        """1-d convolutions run as 2-d ones on (B, C, T, 1): TensorRT convolves 2 or 3 spatial dims."""
        from core.tensorrt_backend import conv1d_as_2d

        trt, net = ctx.trt, ctx.network
        weight_shape = ctx.spec(1)[1]
        one_d = len(stride) == 1
        if one_d:
            x = ctx.output(net.add_unsqueeze(x, ctx.int64([3])))
            weight_shape, stride, pre_padding, post_padding, dilation = conv1d_as_2d(
                weight_shape, stride, pre_padding, post_padding, dilation)
            weight = ctx.reshape(weight, weight_shape)
        layer = net.add_convolution_nd(x, weight_shape[0], trt.Dims(weight_shape[2:]), trt.Weights(), trt.Weights())
        layer.set_input(1, weight)
        if bias:
            layer.set_input(2, bias[0])
        layer.stride_nd = trt.Dims(stride)
        layer.pre_padding = trt.Dims(pre_padding)
        layer.post_padding = trt.Dims(post_padding)
        layer.dilation_nd = trt.Dims(dilation)
        layer.num_groups = groups
        y = ctx.output(layer)
        return ctx.output(net.add_squeeze(y, ctx.int64([3]))) if one_d else y

@register
class Reshape:
    """Reshape to ``dims`` (at most one -1); a dynamic target comes as an int64 shape tensor."""

    name = "reshape"

    @staticmethod
    def infer(x, *shape, dims: list[int]) -> list[Spec]:
        if shape:
            _require(shape[0].dtype == DataType.int64 and shape[0].shape == (len(dims),), "reshape: shape must be int64 (rank,)")
        else:
            _require(list(dims).count(-1) <= 1, "reshape: at most one -1")
        return [(x.dtype, tuple(dims))]

    @staticmethod
    def torch(x, *shape, dims: list[int]):
        return x.reshape(shape[0] if shape else dims)

    @staticmethod
    def tensorrt(ctx, x, *shape, dims: list[int]):
        layer = ctx.network.add_shuffle(x)
        layer.zero_is_placeholder = False
        if shape:
            layer.set_input(1, shape[0])
        else:
            layer.reshape_dims = ctx.trt.Dims(dims)
        return ctx.output(layer)

@register
class Permute:
    name = "permute"

    @staticmethod
    def infer(x, *, dims: list[int]) -> list[Spec]:
        _require(sorted(dims) == list(range(x.ndim)), f"permute: {dims} is not a permutation of rank {x.ndim}")
        return [(x.dtype, tuple(x.shape[d] for d in dims))]

    @staticmethod
    def torch(x, *, dims: list[int]):
        return x.permute(dims)

    @staticmethod
    def tensorrt(ctx, x, *, dims: list[int]):
        layer = ctx.network.add_shuffle(x)
        layer.first_transpose = ctx.trt.Permutation(dims)
        return ctx.output(layer)

@register
class Unsqueeze:
    name = "unsqueeze"

    @staticmethod
    def infer(x, *, dim: int) -> list[Spec]:
        axis = _axis(dim, x.ndim + 1)
        return [(x.dtype, (*x.shape[:axis], 1, *x.shape[axis:]))]

    @staticmethod
    def torch(x, *, dim: int):
        return x.unsqueeze(dim)

    @staticmethod
    def tensorrt(ctx, x, *, dim: int):
        return ctx.output(ctx.network.add_unsqueeze(x, ctx.int64([_axis(dim, ctx.rank(0) + 1)])))

@register
class Squeeze:
    name = "squeeze"

    @staticmethod
    def infer(x, *, dim: int) -> list[Spec]:
        axis = _axis(dim, x.ndim)
        _require(x.shape[axis] in (1, -1), f"squeeze: dim {dim} has size {x.shape[axis]}")
        return [(x.dtype, x.shape[:axis] + x.shape[axis + 1:])]

    @staticmethod
    def torch(x, *, dim: int):
        return x.squeeze(dim)

    @staticmethod
    def tensorrt(ctx, x, *, dim: int):
        return ctx.output(ctx.network.add_squeeze(x, ctx.int64([_axis(dim, ctx.rank(0))])))

@register
class Concat:
    name = "concat"

    @staticmethod
    def infer(*xs, dim: int) -> list[Spec]:
        dtype = _same_dtype("concat", *xs)
        rank = xs[0].ndim
        _require(all(x.ndim == rank for x in xs), "concat: inputs must have equal rank")
        axis = _axis(dim, rank)
        sizes = [x.shape[axis] for x in xs]
        shape = list(broadcast_shape("concat", *[x.shape[:axis] + (1,) + x.shape[axis + 1:] for x in xs]))
        shape[axis] = -1 if -1 in sizes else sum(sizes)
        return [(dtype, tuple(shape))]

    @staticmethod
    def torch(*xs, dim: int):
        if isinstance(xs[0], list):
            return [v for x in xs for v in x]
        return torch.cat(xs, dim)

    @staticmethod
    def tensorrt(ctx, *xs, dim: int):
        layer = ctx.network.add_concatenation(list(xs))
        layer.axis = _axis(dim, ctx.rank(0))
        return ctx.output(layer)

@register
class Slice:
    """``x[start : start + size]`` along ``dim``; start and size are ints or (1,) int64 tensors."""

    name = "slice"

    @staticmethod
    def infer(x, *bounds, dim: int, start: int | None, size: int | None) -> list[Spec]:
        axis = _axis(dim, x.ndim)
        _require(len(bounds) == (start is None) + (size is None), "slice: one tensor per dynamic bound")
        for b in bounds:
            _require(b.dtype == DataType.int64 and b.shape == (1,), "slice: dynamic bounds are int64 (1,)")
        shape = list(x.shape)
        shape[axis] = -1 if size is None else size
        return [(x.dtype, tuple(shape))]

    @staticmethod
    def torch(x, *bounds, dim: int, start: int | None, size: int | None):
        it = iter(bounds)
        begin = next(it)[0] if start is None else start
        length = next(it)[0] if size is None else size
        if isinstance(x, list):
            return x[begin:begin + length]
        return x.narrow(dim, begin, length)

    @staticmethod
    def tensorrt(ctx, x, *bounds, dim: int, start: int | None, size: int | None):
        it = iter(bounds)
        begin = next(it) if start is None else ctx.int64([start])
        length = next(it) if size is None else ctx.int64([size])
        return ctx.slice_along(x, _axis(dim, ctx.rank(0)), begin, length)

@register
class Pad:
    name = "pad"

    @staticmethod
    def infer(x, *, dim: int, before: int, after: int, value: float) -> list[Spec]:
        axis = _axis(dim, x.ndim)
        shape = list(x.shape)
        if shape[axis] != -1:
            shape[axis] += before + after
        return [(x.dtype, tuple(shape))]

    @staticmethod
    def torch(x, *, dim: int, before: int, after: int, value: float):
        axis = dim % x.ndim
        pads = [0, 0] * (x.ndim - 1 - axis) + [before, after]
        return torch.nn.functional.pad(x, pads, value=value)

    @staticmethod
    def tensorrt(ctx, x, *, dim: int, before: int, after: int, value: float):
        axis = _axis(dim, ctx.rank(0))
        size = ctx.output(ctx.network.add_elementwise(ctx.dim(x, axis), ctx.int64([before + after]),
                                                      ctx.trt.ElementWiseOperation.SUM))
        return ctx.slice_along(x, axis, ctx.int64([-before]), size, fill=value)

@register
class Shape:
    name = "shape"

    @staticmethod
    def infer(x) -> list[Spec]:
        return [(DataType.int64, (x.ndim,))]

    @staticmethod
    def torch(x):
        return list(x.shape)

    @staticmethod
    def tensorrt(ctx, x):
        return ctx.output(ctx.network.add_shape(x))

@register
class ShapeConstant:
    """A small int64 vector for shape arithmetic, kept inline in the network."""

    name = "shape_constant"

    @staticmethod
    def infer(*, values: list[int]) -> list[Spec]:
        return [(DataType.int64, (len(values),))]

    @staticmethod
    def torch(*, values: list[int]):
        return list(values)

    @staticmethod
    def tensorrt(ctx, *, values: list[int]):
        return ctx.int64(values)

@register
class Gather:
    """Select entries of ``x`` along ``dim`` by ``indices`` (output: x.shape[:dim] + indices.shape + x.shape[dim+1:])."""

    name = "gather"

    @staticmethod
    def infer(x, indices, *, dim: int) -> list[Spec]:
        _require(indices.dtype in (DataType.int32, DataType.int64), "gather: indices must be int32/int64")
        axis = _axis(dim, x.ndim)
        return [(x.dtype, x.shape[:axis] + indices.shape + x.shape[axis + 1:])]

    @staticmethod
    def torch(x, indices, *, dim: int):
        # indexing, not index_select: its output has indices' shape as is, where index_select's flat output split
        # back into a dynamic dim makes torch.export emit divisibility guards it cannot prove
        return x[(slice(None),) * (dim % x.ndim) + (indices.long(),)]

    @staticmethod
    def tensorrt(ctx, x, indices, *, dim: int):
        return ctx.output(ctx.network.add_gather(x, indices, _axis(dim, ctx.rank(0))))

@register
class GatherElements:
    """``out[..., i, ...] = x[..., indices[..., i, ...], ...]`` along ``dim`` (torch.gather)."""

    name = "gather_elements"

    @staticmethod
    def infer(x, indices, *, dim: int) -> list[Spec]:
        _require(indices.dtype in (DataType.int32, DataType.int64), "gather_elements: indices must be int32/int64")
        _require(x.ndim == indices.ndim, "gather_elements: ranks differ")
        return [(x.dtype, indices.shape)]

    @staticmethod
    def torch(x, indices, *, dim: int):
        return torch.gather(x, dim, indices.long())

    @staticmethod
    def tensorrt(ctx, x, indices, *, dim: int):
        layer = ctx.network.add_gather_v2(x, indices, ctx.trt.GatherMode.ELEMENT)
        layer.axis = _axis(dim, ctx.rank(0))
        return ctx.output(layer)

@register
class Arange:
    """0, 1, ..., n-1 for an int64 (1,) tensor n."""

    name = "arange"
    needs_device = True

    @staticmethod
    def infer(n, *, dtype: str) -> list[Spec]:
        _require(n.dtype == DataType.int64 and n.shape == (1,), "arange: n must be int64 (1,)")
        _require(DataType(dtype) in (DataType.int32, DataType.float32), "arange: int32 or float32 output")
        return [(DataType(dtype), (-1,))]

    @staticmethod
    def torch(n, *, dtype: str, device: torch.device):
        return torch.arange(n[0], dtype=DataType(dtype).torch, device=device)

    @staticmethod
    def tensorrt(ctx, n, *, dtype: str):
        dtype = DataType(dtype)
        layer = ctx.network.add_fill(ctx.trt.Dims([0]), ctx.trt.FillOperation.LINSPACE, ctx.dtype(dtype))
        layer.set_input(0, n)
        layer.set_input(1, ctx.scalar(0, dtype, 0))
        layer.set_input(2, ctx.scalar(1, dtype, 1))
        return ctx.output(layer)

@register
class TopK:
    name = "topk"

    @staticmethod
    def infer(x, *, k: int, dim: int) -> list[Spec]:
        axis = _axis(dim, x.ndim)
        shape = list(x.shape)
        shape[axis] = k
        return [(x.dtype, tuple(shape)), (DataType.int32, tuple(shape))]

    @staticmethod
    def torch(x, *, k: int, dim: int):
        values, indices = torch.topk(x, k, dim)
        return values, indices.to(torch.int32)

    @staticmethod
    def tensorrt(ctx, x, *, k: int, dim: int):
        layer = ctx.network.add_topk(x, ctx.trt.TopKOperation.MAX, k, 1 << _axis(dim, ctx.rank(0)))
        return ctx.output(layer, 0), ctx.output(layer, 1)


def _per_axis(scale, rank: int, axis: int):
    """A scalar or per-channel (C,) scale, shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if scale.dim() == 0 or scale.numel() == 1:
        return scale.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return scale.reshape(shape)


@register
class Quantize:
    """int8 = clamp(round(x / scale), -128, 127); scale is a scalar or per channel along ``axis``."""

    name = "quantize"

    @staticmethod
    def infer(x, scale, *, axis: int) -> list[Spec]:
        _require(x.dtype.is_float and scale.dtype == x.dtype, "quantize: float input and a scale of its dtype")
        _require(scale.ndim <= 1, "quantize: scalar or per-channel scale")
        return [(DataType.int8, x.shape)]

    @staticmethod
    def torch(x, scale, *, axis: int):
        q = torch.round(x / _per_axis(scale, x.dim(), axis % x.dim()))
        return torch.clamp(q, -128, 127).to(torch.int8)

    @staticmethod
    def tensorrt(ctx, x, scale, *, axis: int):
        layer = ctx.network.add_quantize(x, scale, ctx.trt.int8)
        layer.axis = _axis(axis, ctx.rank(0))
        return ctx.output(layer)


@register
class Dequantize:
    """x = int8 * scale, in ``dtype`` (the scale's); per-channel scales need a constant input (weights)."""

    name = "dequantize"

    @staticmethod
    def infer(x, scale, *, axis: int) -> list[Spec]:
        _require(x.dtype == DataType.int8 and scale.dtype.is_float, "dequantize: int8 input, float scale")
        _require(scale.ndim <= 1, "dequantize: scalar or per-channel scale")
        return [(scale.dtype, x.shape)]

    @staticmethod
    def torch(x, scale, *, axis: int):
        return x.to(scale.dtype) * _per_axis(scale, x.dim(), axis % x.dim())

    @staticmethod
    def tensorrt(ctx, x, scale, *, axis: int):
        layer = ctx.network.add_dequantize(x, scale, ctx.dtype(ctx.spec(1)[0]))
        layer.axis = _axis(axis, ctx.rank(0))
        return ctx.output(layer)


@register
class Attention:
    """Fused multi-head attention (``core.composite.attention`` says what it computes).

    Inputs: q (B, H, M, D), k (B, H, N, D), v (B, H, N, Dv), then key_lengths (B,) int32 if
    ``has_lengths``, key_ends (B, N) int32 if ``has_key_ends`` (a tree mask), rows (B, M) int32 if ``has_rows``
    (q, and with ``packed_kv`` k and v, are packed rows (1, H, P, D)), slots (P,) int32 if ``has_slots`` (the
    output packed as q, (1, H, P, Dv)), then pos (1 or B, H, N, D),
    pos_bias_u and pos_bias_v (H, D) if ``has_pos``, then the
    projections' biases: q_bias (H, D) if ``has_q_bias``, k_bias (H, D) and v_bias (H, Dv) if ``has_kv_bias``.
    PyTorch lowering: the ``wenet_trt::attention`` plugin (a Triton kernel on CUDA). TensorRT
    lowering: ``composite`` -- the decomposition, whose matmul-softmax-matmul TensorRT fuses itself.
    """

    name = "attention"
    composite = True

    @staticmethod
    def infer(q, k, v, *rest, scale: float, causal: bool, has_lengths: bool, has_pos: bool, has_q_bias: bool = False,
              has_kv_bias: bool = False, has_key_ends: bool = False, has_rows: bool = False,
              has_slots: bool = False, packed_kv: bool = False) -> list[Spec]:
        dtype = _same_dtype("attention", q, k, v)
        _require(dtype.is_float, "attention needs float q/k/v")
        _require(q.ndim == k.ndim == v.ndim == 4, "attention: q, k, v must be (B, H, T, D)")
        _require(len(rest) == int(has_lengths) + int(has_key_ends) + int(has_rows) + int(has_slots) + 3 * int(has_pos)
                 + int(has_q_bias) + 2 * int(has_kv_bias),
                 "attention: inputs do not match has_lengths/has_key_ends/has_rows/has_slots/has_pos/has_q_bias/"
                 "has_kv_bias")
        key_lengths, key_ends, rows, slots, pos, projection_biases = Attention._split(rest, has_lengths, has_key_ends,
                                                                                      has_rows, has_slots, has_pos)
        if key_lengths is not None:
            _require(key_lengths.dtype == DataType.int32 and key_lengths.ndim == 1,
                     "attention: key_lengths must be int32 (B,)")
        if key_ends is not None:
            _require(key_ends.dtype == DataType.int32 and key_ends.ndim == 2, "attention: key_ends must be int32 (B, N)")
        _require(not packed_kv or rows is not None, "attention: packed_kv needs rows")
        _require(slots is None or rows is not None, "attention: slots need rows")
        if pos is not None:
            _same_dtype("attention", q, *pos)
            _require(pos[0].ndim == 4 and pos[1].ndim == 2 == pos[2].ndim, "attention: pos (B|1, H, N, D), biases (H, D)")
            _require(rows is None, "attention: packed rows take no pos")
        if projection_biases:
            _same_dtype("attention", q, *projection_biases)
            _require(all(b.ndim == 2 for b in projection_biases), "attention: projection biases must be (H, D)")
        if rows is not None:
            _require(rows.dtype == DataType.int32 and rows.ndim == 2, "attention: rows must be int32 (B, M)")
            if slots is not None:
                _require(slots.dtype == DataType.int32 and slots.ndim == 1, "attention: slots must be int32 (P,)")
                return [(dtype, (1, q.shape[1], slots.shape[0], v.shape[3]))]
            return [(dtype, (rows.shape[0], q.shape[1], rows.shape[1], v.shape[3]))]
        return [(dtype, (*broadcast_shape("attention", q.shape[:2], k.shape[:2]), q.shape[2], v.shape[3]))]

    @staticmethod
    def _split(rest, has_lengths: bool, has_key_ends: bool, has_rows: bool, has_slots: bool, has_pos: bool) -> tuple:
        """(key_lengths, key_ends, rows, slots, (pos, pos_bias_u, pos_bias_v): each or None, the projection biases)
        of the optional inputs."""
        rest = list(rest)
        key_lengths, key_ends, rows, slots = (rest.pop(0) if flag else None
                                              for flag in (has_lengths, has_key_ends, has_rows, has_slots))
        return key_lengths, key_ends, rows, slots, (tuple(rest[:3]) if has_pos else None), rest[3 * int(has_pos):]

    @staticmethod
    def torch(q, k, v, *rest, scale: float, causal: bool, has_lengths: bool, has_pos: bool, has_q_bias: bool = False,
              has_kv_bias: bool = False, has_key_ends: bool = False, has_rows: bool = False, has_slots: bool = False,
              packed_kv: bool = False):
        from plugins import kernel_available
        from plugins.attention import attention, decomposed

        key_lengths, key_ends, rows, slots, pos, biases = Attention._split(rest, has_lengths, has_key_ends, has_rows,
                                                                           has_slots, has_pos)
        q_bias = biases.pop(0) if has_q_bias else None
        k_bias, v_bias = biases if has_kv_bias else (None, None)
        # without a kernel: the decomposition inline, so that export and Inductor see plain ops
        run = attention if kernel_available(q.device) else decomposed
        return run(q, k, v, key_lengths, key_ends, rows, slots, *(pos or (None, None, None)), q_bias, k_bias, v_bias,
                   scale, causal, packed_kv)

    tensorrt = None


def linear_act_features(weight_rows: int, activation: str) -> int:
    """``linear_act``'s output columns: glu pairs the weight's rows (value, gate)."""
    return weight_rows // 2 if activation == "glu" else weight_rows


@register
class LinearAct:
    """``act(x·Wᵀ + b)``, a GEMM with its bias and activation (relu, swish, glu) as epilogue
    (``core.composite.linear_act`` says what it computes). Inputs: x (..., K), weight (N, K), then bias (N,) if
    ``has_bias``; ``out_dtype`` float32 with half inputs: bias and activation applied in fp32, returned unrounded.
    PyTorch lowering for half x on CUDA: relu with a bias, x's dtype out and K >= 64 runs as cuBLASLt's GEMM with its
    bias + relu epilogue (``torch._addmm_activation``), the rest as the ``wenet_trt::linear_act`` plugin (a Triton
    kernel); elsewhere the decomposition. TensorRT lowering: ``composite`` -- the decomposition, whose epilogue
    TensorRT fuses itself.
    """

    name = "linear_act"
    composite = True

    @staticmethod
    def infer(x, weight, *rest, activation: str, has_bias: bool, out_dtype: str | None = None) -> list[Spec]:
        dtype = _same_dtype("linear_act", x, weight, *rest)
        _require(dtype.is_float, "linear_act needs float inputs")
        _require(activation in ("relu", "swish", "glu"), f"linear_act: unsupported activation {activation!r}")
        _require(activation != "glu" or weight.shape[0] % 2 == 0,
                 f"linear_act: glu needs an even number of output features, got {weight.shape[0]}")
        _require(out_dtype in (None, dtype.value, "float32"), f"linear_act: out_dtype {out_dtype} from {dtype.value}")
        _require(weight.ndim == 2 and x.ndim >= 2, f"linear_act: x (..., K) and weight (N, K), got {x.shape} and "
                                                   f"{weight.shape}")
        _require(x.shape[-1] in (weight.shape[1], -1), f"linear_act: inner dims {x.shape[-1]} and {weight.shape[1]} differ")
        _require(len(rest) == int(has_bias) and all(b.shape == (weight.shape[0],) for b in rest),
                 "linear_act: bias must be (N,) and match has_bias")
        shape = (*x.shape[:-1], linear_act_features(weight.shape[0], activation))
        return [(DataType(out_dtype) if out_dtype else dtype, shape)]

    @staticmethod
    def torch(x, weight, *rest, activation: str, has_bias: bool, out_dtype: str | None = None):
        from plugins import kernel_available
        from plugins.linear import decomposed, linear_act

        bias = rest[0] if has_bias else None
        # fp32 stays on cuBLAS (Triton's fp32 dot is no faster); without a kernel the decomposition runs inline,
        # so that export and Inductor see plain ops
        fused = kernel_available(x.device) and x.dtype != torch.float32
        out = getattr(torch, out_dtype) if out_dtype else None
        if fused and activation == "relu" and bias is not None and out is None and weight.shape[1] >= 64:
            # cuBLAS has a relu epilogue (not a swish one): 148 us against the Triton kernel's 239 at 77,000 x 256 ->
            # 2,048 (a decoder FFN over long hypotheses), 41 against 52 at 15,360 rows, equal at 210 (H200); not for a
            # short K: the subsampling's K = 16 GEMM (1.3 M rows -> 256) took 315 us there against 185
            rows = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t())
            return rows.view(*x.shape[:-1], weight.shape[0])
        return (linear_act if fused else decomposed)(x, weight, bias, activation, out)

    tensorrt = None


@register
class TopKLogProbs:
    """The ``k`` largest entries of ``log_softmax(x·Wᵀ + b)`` per row and their labels
    (``core.composite.top_k_log_probs`` says what it computes). Inputs: x (..., K), weight (R, K) with R >= V, bias
    (V,) fp32.
    PyTorch lowering: the ``wenet_trt::top_k_log_probs`` plugin (Triton kernels) on CUDA, also for fp32 x, where
    the decomposition would write and sort every log-prob; else the decomposition. TensorRT lowering:
    ``composite`` -- the decomposition (a GEMM, a softmax and an ITopKLayer).
    """

    name = "top_k_log_probs"
    composite = True

    @staticmethod
    def infer(x, weight, bias, *, k: int) -> list[Spec]:
        _check_output_layer("top_k_log_probs", x, weight, bias)
        _require(0 < k and (bias.shape[0] == -1 or k <= bias.shape[0]), f"top_k_log_probs: k={k} outside 1..V")
        shape = (*x.shape[:-1], k)
        return [(DataType.float32, shape), (DataType.int32, shape)]

    @staticmethod
    def torch(x, weight, bias, *, k: int):
        from plugins import kernel_available
        from plugins.top_k_log_probs import decomposed, top_k_log_probs

        # without a kernel the decomposition runs inline, so that export and Inductor see plain ops
        return (top_k_log_probs if kernel_available(x.device) else decomposed)(x, weight, bias, k)

    tensorrt = None


def _check_output_layer(op: str, x, weight, bias) -> None:
    """x (..., K) and weight (R, K) of one float dtype, fp32 bias (V,), R >= V."""
    _same_dtype(op, x, weight)
    _require(x.dtype.is_float and bias.dtype == DataType.float32, f"{op}: float x and weight, fp32 bias")
    _require(weight.ndim == 2 and bias.ndim == 1 and x.ndim >= 1,
             f"{op}: x (..., K), weight (R, K), bias (V,), got {x.shape}, {weight.shape}, {bias.shape}")
    _require(x.shape[-1] in (weight.shape[1], -1), f"{op}: inner dims {x.shape[-1]} and {weight.shape[1]} differ")
    _require(-1 in (weight.shape[0], bias.shape[0]) or weight.shape[0] >= bias.shape[0],
             f"{op}: weight needs at least one row per bias entry")


@register
class TokenLogProbs:
    """``log_softmax(x·Wᵀ + b)[target]`` per row, fp32 (``core.composite.token_log_probs`` says what it computes).
    Inputs: x (..., K), weight (R, K) with R >= V, bias (V,) fp32, targets (...) int32.
    PyTorch lowering: the ``wenet_trt::token_log_probs`` plugin (a Triton kernel) for half x on CUDA, else the
    decomposition. TensorRT lowering: ``composite`` -- the decomposition.
    """

    name = "token_log_probs"
    composite = True

    @staticmethod
    def infer(x, weight, bias, targets) -> list[Spec]:
        _check_output_layer("token_log_probs", x, weight, bias)
        _require(targets.dtype == DataType.int32, "token_log_probs: targets must be int32")
        _require(x.ndim == targets.ndim + 1, f"token_log_probs: x (..., K) and targets (...), got {x.shape}, "
                                             f"{targets.shape}")
        return [(DataType.float32, broadcast_shape("token_log_probs", x.shape[:-1], targets.shape))]

    @staticmethod
    def torch(x, weight, bias, targets):
        from plugins import kernel_available
        from plugins.token_log_probs import decomposed, token_log_probs

        # fp32 stays on cuBLAS; without a kernel the decomposition runs inline, so that export and Inductor see
        # plain ops
        fused = kernel_available(x.device) and x.dtype != torch.float32
        return (token_log_probs if fused else decomposed)(x, weight, bias, targets)

    tensorrt = None


@register
class DepthwiseNormAct:
    """The conformer conv module's depthwise convolution + LayerNorm + activation, channels last
    (``core.composite.depthwise_norm_act`` says what it computes). Inputs: x (B, T, C) float, fp32 taps (C, k) and
    bias (C,), then valid (B, T) bool if ``has_valid``, the padding frames' fp32 value (C,) if ``has_pad_value``,
    then fp32 norm weight and bias (C,) if ``has_norm``.
    PyTorch lowering: the ``wenet_trt::depthwise_norm_act`` plugin (a Triton kernel) on CUDA, else the
    decomposition. TensorRT lowering: ``composite`` -- the decomposition.
    """

    name = "depthwise_norm_act"
    composite = True

    @staticmethod
    def infer(x, taps, bias, *rest, kernel_size: int, pad_left: int, pad_right: int, eps: float, activation: str,
              out_dtype: str, has_valid: bool, has_norm: bool, has_pad_value: bool = False) -> list[Spec]:
        f32 = DataType.float32
        _require(x.dtype.is_float and x.ndim == 3, f"depthwise_norm_act: float x (B, T, C), got {x.dtype.value} {x.shape}")
        _require(taps.dtype == bias.dtype == f32 and taps.shape[1:] == (kernel_size,) and bias.ndim == 1,
                 f"depthwise_norm_act: fp32 taps (C, {kernel_size}) and bias (C,), got {taps.shape}, {bias.shape}")
        _require(len(rest) == int(has_valid) + int(has_pad_value) + 2 * int(has_norm),
                 "depthwise_norm_act: inputs must match the flags")
        _require(not has_valid or rest[0].dtype == DataType.bool, "depthwise_norm_act: valid must be bool")
        _require(all(t.dtype == f32 and t.ndim == 1 for t in rest[int(has_valid):]),
                 "depthwise_norm_act: fp32 (C,) pad value, norm weight and bias")
        _require(activation in ("swish", "relu"), f"depthwise_norm_act: unsupported activation {activation!r}")
        frames = x.shape[1] + pad_left + pad_right - kernel_size + 1 if x.shape[1] != -1 else -1
        return [(DataType(out_dtype), (x.shape[0], frames, x.shape[2]))]

    @staticmethod
    def torch(x, taps, bias, *rest, kernel_size: int, pad_left: int, pad_right: int, eps: float, activation: str,
              out_dtype: str, has_valid: bool, has_norm: bool, has_pad_value: bool = False):
        from plugins import kernel_available
        from plugins.depthwise import decomposed, depthwise_norm_act

        rest = list(rest)
        valid, pad_value = (rest.pop(0) if flag else None for flag in (has_valid, has_pad_value))
        norm_weight, norm_bias = rest if has_norm else (None, None)
        # without a kernel the decomposition runs inline, so that export and Inductor see plain ops
        run = depthwise_norm_act if kernel_available(x.device) else decomposed
        return run(x, taps, bias, valid, pad_value, norm_weight, norm_bias, kernel_size, pad_left, pad_right, eps,
                   activation, getattr(torch, out_dtype))

    tensorrt = None
