"""The functional op set that layers are written with (TensorRT-LLM's ``functional.py``).

Every function records nodes into the network of the enclosing ``net_guard``. Python numbers
become constants of the other operand's dtype; dynamic dims are handled with shape tensors
(``shape``, ``view`` with tensor parts, ``slice`` with tensor bounds), never Python ints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.dtype import DataType
from core.network import default_net
from core.tensor import Tensor

Scalar = int | float | bool
Operand = Tensor | Scalar


def _one(kind: str, inputs: Sequence[Tensor], **attrs) -> Tensor:
    return default_net().emit(kind, inputs, **attrs)[0]


def constant(value: torch.Tensor, name: str | None = None) -> Tensor:
    return default_net().constant(value, name)


def shape_constant(values: Sequence[int]) -> Tensor:
    """An int64 shape vector (host side)."""
    return _one("shape_constant", [], values=[int(v) for v in values])


def _scalar_like(value: Scalar, like: Tensor) -> Tensor:
    if like.dtype == DataType.int64:  # int64 tensors are shape vectors
        return shape_constant([value])
    return constant(torch.full((1,) * like.ndim, value, dtype=like.dtype.torch))


def _to_rank(x: Tensor, rank: int) -> Tensor:
    """Unsqueezes leading dims up to ``rank`` (TensorRT broadcasts between equal ranks only)."""
    while x.ndim < rank:
        x = unsqueeze(x, 0)
    return x


def _align(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    rank = max(a.ndim, b.ndim)
    return _to_rank(a, rank), _to_rank(b, rank)


def _binary(a: Operand, b: Operand, op: str) -> Tensor:
    if not isinstance(a, Tensor):
        a = _scalar_like(a, b)
    if not isinstance(b, Tensor):
        b = _scalar_like(b, a)
    a, b = _align(a, b)
    return _one("binary", [a, b], op=op)


def add(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "add")


def sub(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "sub")


def mul(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "mul")


def div(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "div")


def floordiv(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "floordiv")


def maximum(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "maximum")


def lt(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "lt")


def gt(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "gt")


def eq(a: Operand, b: Operand) -> Tensor:
    return _binary(a, b, "eq")


def logical_and(a: Tensor, b: Tensor) -> Tensor:
    return _binary(a, b, "and")


def _unary(x: Tensor, op: str) -> Tensor:
    return _one("unary", [x], op=op)


def logical_not(x: Tensor) -> Tensor:
    return _unary(x, "not")


def neg(x: Tensor) -> Tensor:
    return _unary(x, "neg")


def exp(x: Tensor) -> Tensor:
    return _unary(x, "exp")


def log(x: Tensor) -> Tensor:
    return _unary(x, "log")


def sqrt(x: Tensor) -> Tensor:
    return _unary(x, "sqrt")


def sigmoid(x: Tensor) -> Tensor:
    return _unary(x, "sigmoid")


def relu(x: Tensor) -> Tensor:
    return _unary(x, "relu")


def silu(x: Tensor) -> Tensor:
    """Swish, ``x * sigmoid(x)`` (TensorRT has no native swish activation)."""
    return x * sigmoid(x)


def activation(x: Tensor, name: str) -> Tensor:
    """An activation by its config name (WeNet's activation_type: "swish" or "relu"), or "glu" over the last dim."""
    if name == "swish":
        return silu(x)
    if name == "relu":
        return relu(x)
    if name == "glu":
        return glu(x, x.ndim - 1)
    raise ValueError(f"unknown activation {name!r}")


def cast(x: Tensor, dtype: DataType | str) -> Tensor:
    """Explicit precision change; a no-op when ``x`` already has ``dtype``."""
    dtype = DataType(dtype)
    return x if x.dtype == dtype else _one("cast", [x], dtype=dtype.value)


def where(cond: Tensor, a: Operand, b: Operand) -> Tensor:
    like = a if isinstance(a, Tensor) else b
    if not isinstance(a, Tensor):
        a = _scalar_like(a, like)
    if not isinstance(b, Tensor):
        b = _scalar_like(b, like)
    rank = max(cond.ndim, a.ndim, b.ndim)
    return _one("where", [_to_rank(cond, rank), _to_rank(a, rank), _to_rank(b, rank)])


def matmul(a: Tensor, b: Tensor, transpose_b: bool = False, out_dtype: DataType | None = None) -> Tensor:
    """``out_dtype`` float32 with half inputs: accumulated and returned in fp32."""
    a, b = _align(a, b)
    if out_dtype is None or out_dtype == a.dtype:
        return _one("matmul", [a, b], transpose_b=transpose_b)
    return _one("matmul", [a, b], transpose_b=transpose_b, out_dtype=out_dtype.value)


def attention(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None = None, *, scale: float,
              causal: bool = False, key_ends: Tensor | None = None, rows: Tensor | None = None,
              packed_kv: bool = False, slots: Tensor | None = None, pos: Tensor | None = None,
              pos_bias_u: Tensor | None = None, pos_bias_v: Tensor | None = None, q_bias: Tensor | None = None,
              kv_bias: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Fused multi-head attention, one node (``core.composite.attention`` defines it; ``plugins.attention``
    runs it): q (B, H, M, D), k/v (B, H, N, D), key_lengths (B,) int32 -> (B, H, M, Dv); ``key_ends`` (B, N)
    int32: a tree mask over nodes in pre-order (query i sees key j where j <= i < key_ends[b, j]); ``rows`` (B, M)
    int32: q (and k/v if ``packed_kv``) are packed rows (1, H, P, D), query m of row b being row rows[b, m] (none
    where < 0); ``slots`` (P,) int32 with ``rows``: the output packed as q, (1, H, P, Dv), row p being query
    slots[p] = b * M + m; ``q_bias`` and ``kv_bias`` (H, D): the projections' biases, added to q, k and v first."""
    inputs = [q, k, v] + [t for t in (key_lengths, key_ends, rows, slots) if t is not None]
    if pos is not None:
        inputs += [pos, pos_bias_u, pos_bias_v]
    inputs += ([q_bias] if q_bias is not None else []) + (list(kv_bias) if kv_bias is not None else [])
    packed = {"has_rows": True, "has_slots": slots is not None, "packed_kv": packed_kv} if rows is not None else {}
    return _one("attention", inputs, scale=float(scale), causal=causal, has_lengths=key_lengths is not None,
                has_key_ends=key_ends is not None, has_pos=pos is not None, has_q_bias=q_bias is not None,
                has_kv_bias=kv_bias is not None, **packed)


def linear_act(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str,
               out_dtype: DataType | None = None) -> Tensor:
    """``activation(x·weightᵀ + bias)`` (relu, swish, or glu over the output's halves), one node: a GEMM with a bias +
    activation epilogue (``core.composite.linear_act`` defines it; ``plugins.linear`` runs it). x (..., K), weight
    (N, K) -> (..., N), or (..., N / 2) for glu; ``out_dtype`` float32 with half x: the bias and activation applied
    in fp32 and returned unrounded."""
    attrs = {} if out_dtype is None or out_dtype == x.dtype else {"out_dtype": out_dtype.value}
    return _one("linear_act", [x, weight] + ([bias] if bias is not None else []), activation=activation,
                has_bias=bias is not None, **attrs)


def token_log_probs(x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """``log_softmax(x·weightᵀ + bias)`` at each row's target token, fp32, one node: an output layer whose logits are
    never written (``core.composite.token_log_probs`` defines it; ``plugins.token_log_probs`` runs it).
    x (..., K), weight (R, K) with R >= V (rows beyond V pad the GEMM), bias (V,) fp32, targets (...) int32."""
    return _one("token_log_probs", [x, weight, bias, targets])


def top_k_log_probs(x: Tensor, weight: Tensor, bias: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of ``log_softmax(x·weightᵀ + bias)`` per row (fp32, largest first) and their labels
    (int32), one node: an output layer whose logits are never written (``core.composite.top_k_log_probs`` defines it;
    ``plugins.top_k_log_probs`` runs it). x (..., K), weight (R, K) with R >= V (rows beyond V pad the GEMM), bias
    (V,) fp32."""
    values, labels = default_net().emit("top_k_log_probs", [x, weight, bias], k=k)
    return values, labels


def depthwise_norm_act(x: Tensor, taps: Tensor, bias: Tensor, *, padding: tuple[int, int] = (0, 0),
                       valid: Tensor | None = None, pad_value: Tensor | None = None,
                       norm: tuple[Tensor, Tensor, float] | None = None, activation: str,
                       out_dtype: DataType) -> Tensor:
    """The conformer conv module's depthwise convolution, norm and activation on channels-last x (B, T, C), one node
    (``core.composite.depthwise_norm_act`` defines it; ``plugins.depthwise`` runs it): frames where ``valid`` (B, T)
    is false read as zero, ``padding`` frames before and after, zero or ``pad_value`` (C,) fp32, fp32 taps (C, k) and
    bias (C,), an fp32 LayerNorm over C from ``norm`` (weight, bias, eps) where given, the result cast to
    ``out_dtype`` and then ``activation`` (swish or relu). -> (B, T + padding - k + 1, C)."""
    inputs = [x, taps, bias] + [t for t in (valid, pad_value) if t is not None] + \
        (list(norm[:2]) if norm is not None else [])
    return _one("depthwise_norm_act", inputs, kernel_size=taps.shape[1], pad_left=padding[0], pad_right=padding[1],
                eps=float(norm[2]) if norm is not None else 0.0, activation=activation, out_dtype=out_dtype.value,
                has_valid=valid is not None, has_pad_value=pad_value is not None, has_norm=norm is not None)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return _one("softmax", [x], dim=dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    return _one("softmax", [x], dim=dim, log=True)


def sum(x: Tensor, dims: Sequence[int], keepdim: bool = False) -> Tensor:  # noqa: A001 - torch's name
    return _one("reduce", [x], op="sum", dims=list(dims), keepdim=keepdim)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return _one("layer_norm", [x, weight, bias], eps=float(eps))


def _pair(v: int | Sequence[int], n: int) -> list[int]:
    return [int(v)] * n if isinstance(v, int) else [int(x) for x in v]


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
           padding: int | tuple[int, int] = 0, dilation: int = 1, groups: int = 1) -> Tensor:
    """1-d convolution on (B, C, T); ``padding`` is symmetric or (left, right)."""
    pre, post = (padding, padding) if isinstance(padding, int) else padding
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return _one("convolution", inputs, stride=[stride], pre_padding=[pre], post_padding=[post],
                dilation=[dilation], groups=groups)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | Sequence[int] = 1,
           padding: int | Sequence[int] = 0) -> Tensor:
    inputs = [x, weight] + ([bias] if bias is not None else [])
    pad = _pair(padding, 2)
    return _one("convolution", inputs, stride=_pair(stride, 2), pre_padding=pad, post_padding=pad,
                dilation=[1, 1], groups=1)


def shape(x: Tensor, dim: int | None = None) -> Tensor:
    """The runtime shape of ``x`` as an int64 vector, or one dim of it as an int64 (1,) vector."""
    if dim is None:
        return _one("shape", [x])
    if x.shape[dim] != -1:
        return shape_constant([x.shape[dim]])
    return slice(_one("shape", [x]), 0, dim % x.ndim, 1)


def view(x: Tensor, dims: Sequence[int | Tensor]) -> Tensor:
    """Reshape; parts may be ints or int64 (1,) shape tensors; at most one -1."""
    if [d for d in dims if not isinstance(d, Tensor)].count(-1) > 1:
        raise ValueError(f"view: at most one -1, got {list(dims)}")
    static = [d if not isinstance(d, Tensor) else -1 for d in dims]
    if all(not isinstance(d, Tensor) for d in dims):
        return _one("reshape", [x], dims=static)
    parts = [d if isinstance(d, Tensor) else shape_constant([d]) for d in dims]
    return _one("reshape", [x, concat(parts, 0)], dims=static)


def permute(x: Tensor, dims: Sequence[int]) -> Tensor:
    return _one("permute", [x], dims=[d % x.ndim for d in dims])


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(x, dims)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    return _one("unsqueeze", [x], dim=dim)


def squeeze(x: Tensor, dim: int) -> Tensor:
    return _one("squeeze", [x], dim=dim)


def concat(xs: Sequence[Tensor], dim: int) -> Tensor:
    return xs[0] if len(xs) == 1 else _one("concat", list(xs), dim=dim)


def slice(x: Tensor, dim: int, start: int | Tensor, size: int | Tensor) -> Tensor:  # noqa: A001
    """``x[start : start + size]`` along ``dim``."""
    bounds = [b for b in (start, size) if isinstance(b, Tensor)]
    return _one("slice", [x, *bounds], dim=dim, start=None if isinstance(start, Tensor) else int(start),
                size=None if isinstance(size, Tensor) else int(size))


def split_half(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    half = x.shape[dim] // 2 if x.shape[dim] != -1 else shape(x, dim) // 2
    return slice(x, dim, 0, half), slice(x, dim, half, half)


def pad(x: Tensor, dim: int, before: int, after: int, value: float = 0.0) -> Tensor:
    return _one("pad", [x], dim=dim, before=before, after=after, value=value)


def gather(x: Tensor, indices: Tensor, dim: int = 0) -> Tensor:
    return _one("gather", [x, indices], dim=dim)


def gather_elements(x: Tensor, indices: Tensor, dim: int) -> Tensor:
    return _one("gather_elements", [x, indices], dim=dim)


def gather_rows(x: Tensor, indices: Tensor) -> Tensor:
    """``x[b, indices[b, ...]]`` per batch row: x (B, M, *rest), indices (B, R, ...) int32 -> (B, R, ...,
    *rest). One gather over the flattened rows, each row's indices offset by b * M."""
    offsets = slice(flat_indices(shape(x, 0), shape(x, 1), indices.dtype), 1, 0, 1)  # (B, 1): b * M
    for _ in range(indices.ndim - 2):
        offsets = unsqueeze(offsets, 2)
    return gather(view(x, [-1, *x.shape[2:]]), indices + offsets, 0)


def arange(n: Tensor, dtype: DataType | str = DataType.int32) -> Tensor:
    return _one("arange", [n], dtype=DataType(dtype).value)


def flat_indices(batch: Tensor, width: Tensor, dtype: DataType | str = DataType.int32) -> Tensor:
    """(B, W): entry (b, w)'s index in the flattened layout, b * W + w (``batch`` and ``width`` are shapes)."""
    return view(arange(batch * width, dtype), [batch, width])


def topk(x: Tensor, k: int, dim: int = -1) -> tuple[Tensor, Tensor]:
    values, indices = default_net().emit("topk", [x], k=k, dim=dim)
    return values, indices


def glu(x: Tensor, dim: int) -> Tensor:
    a, b = split_half(x, dim)
    return a * sigmoid(b)


def make_valid_mask(lengths: Tensor, max_len: Tensor) -> Tensor:
    """(B, T) bool, True where t < lengths[b]; ``max_len`` is an int64 (1,) shape value."""
    positions = unsqueeze(arange(max_len, lengths.dtype), 0)
    return positions < unsqueeze(lengths, 1)



def quantize(x: Tensor, scale: Tensor, axis: int = 0) -> Tensor:
    """int8 quantization with a scalar or per-channel (along ``axis``) scale of ``x``'s dtype."""
    return _one("quantize", [x, scale], axis=axis)


def dequantize(x: Tensor, scale: Tensor, axis: int = 0) -> Tensor:
    """int8 back to the scale's dtype."""
    return _one("dequantize", [x, scale], axis=axis)
