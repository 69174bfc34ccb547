from __future__ import annotations

from collections.abc import Sequence

import torch

from core import functional as F
from core.dtype import DataType
from core.module import Module, Parameter
from core.tensor import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
           out_dtype: DataType | None = None) -> Tensor:
    """``activation(x weightᵀ + bias)`` for a torch-layout (out_features, in_features) weight; with an activation
    one fused op, a GEMM whose epilogue adds the bias and applies it, returned in ``out_dtype`` if given."""
    if activation is not None:
        return F.linear_act(x, weight, bias, activation, out_dtype)
    y = F.matmul(x, weight, transpose_b=True)
    return y + bias if bias is not None else y


class Linear(Module):
    """``y = x W^T + b`` with torch's weight layout (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: DataType = DataType.float32):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter((out_features, in_features), dtype)
        self.bias = Parameter((out_features,), dtype) if bias else None

    def forward(self, x: Tensor, activation: str | None = None) -> Tensor:
        return linear(x, self.weight.value, self.bias.value if self.bias is not None else None, activation)


def fused_linear(x: Tensor, linears: Sequence[Linear], bias: bool = True) -> list[Tensor]:
    """``[linear(x) for linear in linears]`` (without their biases if not ``bias``) as one GEMM over their weights
    concatenated, then slices of its output. The concatenation has only constant inputs, so the build folds it
    into one weight."""
    bias = F.concat([lin.bias.value for lin in linears], 0) if bias and linears[0].bias is not None else None
    y = linear(x, F.concat([lin.weight.value for lin in linears], 0), bias)
    outputs, start = [], 0
    for lin in linears:
        outputs.append(F.slice(y, x.ndim - 1, start, lin.out_features))
        start += lin.out_features
    return outputs


def fp32_accurate_operands(x: Tensor, linear: Linear, dtype: DataType) -> tuple[Tensor, Tensor]:
    """(x', W') whose ``dtype`` product with fp32 accumulation, x'·W'ᵀ, is an fp32 ``linear``'s x·Wᵀ (its bias not
    added), fp32-accurate; W''s rows padded to a multiple of 64, so that an odd vocabulary still gets an aligned GEMM
    (the output-layer ops take the bias and skip the padded columns).

    For a half ``dtype`` each fp32 operand v is split into hi = half(v) and lo = half(v - hi); x·Wᵀ ≈ x_hi·W_hiᵀ +
    x_lo·W_hiᵀ + x_hi·W_loᵀ runs as one half GEMM over the parts concatenated along K (relative error near 2^-22 in
    fp16 where a plain fp16 GEMM has 2^-11, near 2^-16 in bf16; with a half x, x_lo is zero and dropped). The weight
    parts are constants, folded at build time."""
    f32 = DataType.float32
    weight = linear.weight.value
    if dtype == f32:
        return F.cast(x, f32), weight
    rows = -linear.out_features % 64
    if rows:
        weight = F.pad(weight, 0, 0, rows)
    w_hi = F.cast(weight, dtype)
    w_lo = F.cast(weight - F.cast(w_hi, f32), dtype)
    if x.dtype == f32:
        x_hi = F.cast(x, dtype)
        x_lo = F.cast(x - F.cast(x_hi, f32), dtype)
        parts, weights = [x_hi, x_lo, x_hi], [w_hi, w_hi, w_lo]
    else:
        parts, weights = [F.cast(x, dtype)] * 2, [w_hi, w_lo]
    return F.concat(parts, -1), F.concat(weights, 1)


def _bias_or_zeros(linear: Linear) -> Tensor:
    return linear.bias.value if linear.bias is not None else F.constant(torch.zeros(linear.out_features))


def fp32_accurate_token_log_probs(x: Tensor, linear: Linear, targets: Tensor, dtype: DataType) -> Tensor:
    """``log_softmax(x·Wᵀ + b)`` at each row's ``targets`` entry, x·Wᵀ fp32-accurate (``fp32_accurate_operands``), as
    one fused op that never writes the logits (``F.token_log_probs``)."""
    return F.token_log_probs(*fp32_accurate_operands(x, linear, dtype), _bias_or_zeros(linear), targets)


def fp32_accurate_top_k_log_probs(x: Tensor, linear: Linear, k: int, dtype: DataType) -> tuple[Tensor, Tensor]:
    """The ``k`` best (log-prob, label) per row of ``log_softmax(x·Wᵀ + b)``, x·Wᵀ fp32-accurate
    (``fp32_accurate_operands``), as one fused op that never writes the logits (``F.top_k_log_probs``)."""
    return F.top_k_log_probs(*fp32_accurate_operands(x, linear, dtype), _bias_or_zeros(linear), k)


class WeightOnlyInt8Linear(Module):
    """Linear with int8 weights and a per-output-channel scale: int8 constant -> dequantize -> matmul,
    the plugin-free path TensorRT fuses into a weight-only GEMM. Activations stay in ``dtype``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: DataType = DataType.float16):
        super().__init__()
        self.weight = Parameter((out_features, in_features), DataType.int8)
        self.per_channel_scale = Parameter((out_features,), dtype)
        self.bias = Parameter((out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        weight = F.dequantize(self.weight.value, self.per_channel_scale.value, axis=0)
        return linear(x, weight, self.bias.value if self.bias is not None else None)
