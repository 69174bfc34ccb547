"""``wenet_trt::gemm``: a GEMM with its neighbours fused, as one Triton kernel.

What it computes is ``core.composite.gemm``: optionally LayerNorm over each row of x first (the
whole row is one K tile, so the statistics never leave the kernel), then x · Wᵀ accumulated in
fp32, bias, an activation (swish, relu, or GLU over the two halves of the columns, each program
computing both halves of its columns), and optionally the add to the fp32 residual stream. A
conformer feed-forward sublayer becomes two kernels instead of a norm, two GEMMs, a swish and an add.

Registered with ``torch.library.triton_op`` like ``plugins.attention``; where no kernel can run,
the op runs the decomposition.
"""

from __future__ import annotations

import os

import torch

from core.composite import run_decomposition
from plugins import register_op
from plugins.attention import kernel_available

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the decomposition serves
    triton = None

ACTIVATIONS = {"none": 0, "swish": 1, "relu": 2, "glu": 3}
MAX_NORM_K = 1024  # a normed row must fit one tile


if triton is not None:

    @triton.jit
    def _gemm_kernel(X, W, BIAS, NORM_W, NORM_B, RES, OUT, M, N, K, stride_xm, stride_wn, stride_rm, stride_om,
                     eps, residual_scale,
                     HAS_BIAS: tl.constexpr, HAS_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output columns; GLU also reads cols + N
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        start = 0
        while start < K:  # one pass when HAS_NORM (BLOCK_K >= K); a while loop, as in plugins.attention
            k = start + tl.arange(0, BLOCK_K)
            x = tl.load(X + rows[:, None] * stride_xm + k[None, :], mask=(rows[:, None] < M) & (k[None, :] < K),
                        other=0.0)
            if HAS_NORM:
                x = x.to(tl.float32)
                mean = tl.sum(x, 1) / K
                centred = tl.where(k[None, :] < K, x - mean[:, None], 0.0)
                rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / K + eps)
                x = centred * rstd[:, None] * tl.load(NORM_W + k, mask=k < K, other=0.0)[None, :] + \
                    tl.load(NORM_B + k, mask=k < K, other=0.0)[None, :]
            x = x.to(W.dtype.element_ty)
            w = tl.load(W + cols[None, :] * stride_wn + k[:, None], mask=(cols[None, :] < N) & (k[:, None] < K),
                        other=0.0)
            acc += tl.dot(x, w, input_precision=PRECISION)
            if ACTIVATION == 3:
                w = tl.load(W + (cols[None, :] + N) * stride_wn + k[:, None],
                            mask=(cols[None, :] < N) & (k[:, None] < K), other=0.0)
                gate += tl.dot(x, w, input_precision=PRECISION)
            start += BLOCK_K
        if HAS_BIAS:
            acc += tl.load(BIAS + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            if ACTIVATION == 3:
                gate += tl.load(BIAS + N + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        if ACTIVATION == 1:
            acc = acc * tl.sigmoid(acc)
        if ACTIVATION == 2:
            acc = tl.maximum(acc, 0.0)
        if ACTIVATION == 3:
            acc = acc * tl.sigmoid(gate)
        keep = (rows[:, None] < M) & (cols[None, :] < N)
        if HAS_RESIDUAL:
            acc = tl.load(RES + rows[:, None] * stride_rm + cols[None, :], mask=keep, other=0.0) + acc * residual_scale
        tl.store(OUT + rows[:, None] * stride_om + cols[None, :], acc.to(OUT.dtype.element_ty), mask=keep)


def _launch(x, weight, bias, norm_weight, norm_bias, residual, activation, eps, residual_scale):
    from torch.library import wrap_triton

    k = weight.shape[1]
    n = weight.shape[0] // 2 if activation == "glu" else weight.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    out_dtype = residual.dtype if residual is not None else weight.dtype
    out = torch.empty((*lead, n), dtype=out_dtype, device=x.device)
    res = residual.reshape(-1, n) if residual is not None else out
    has_norm = norm_weight is not None
    block_k = triton.next_power_of_2(k) if has_norm else 64
    block_m, block_n = (32, 64) if block_k > 256 else (64, 64)  # a normed row tile is held whole
    kernel = _gemm_kernel if os.environ.get("TRITON_INTERPRET") == "1" else wrap_triton(_gemm_kernel)
    kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
        x2, weight, bias if bias is not None else weight, norm_weight if has_norm else weight,
        norm_bias if has_norm else weight, res, out, m, n, k, x2.stride(0), weight.stride(0), res.stride(0), n,
        eps, residual_scale,
        HAS_BIAS=bias is not None, HAS_NORM=has_norm, HAS_RESIDUAL=residual is not None,
        ACTIVATION=ACTIVATIONS[activation], BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION="ieee" if weight.dtype == torch.float32 else "tf32")
    return out


def decomposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm_weight: torch.Tensor | None,
               norm_bias: torch.Tensor | None, residual: torch.Tensor | None, activation: str, eps: float,
               residual_scale: float) -> torch.Tensor:
    """The op through its decomposition (``core.composite.gemm``), on any device."""
    inputs = [x, weight] + [t for t in (bias, norm_weight, norm_bias, residual) if t is not None]
    return run_decomposition("gemm", inputs, {"activation": activation, "eps": eps, "residual_scale": residual_scale,
                                              "has_bias": bias is not None, "has_norm": norm_weight is not None,
                                              "has_residual": residual is not None})


def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm_weight: torch.Tensor | None,
          norm_bias: torch.Tensor | None, residual: torch.Tensor | None, activation: str, eps: float,
          residual_scale: float) -> torch.Tensor:
    usable = kernel_available(x.device) and (norm_weight is None or weight.shape[1] <= MAX_NORM_K)
    launch = _launch if usable else decomposed
    return launch(x, weight, bias, norm_weight, norm_bias, residual, activation, eps, residual_scale)


def _fake(x, weight, bias, norm_weight, norm_bias, residual, activation, eps, residual_scale):
    n = weight.shape[0] // 2 if activation == "glu" else weight.shape[0]
    return x.new_empty((*x.shape[:-1], n), dtype=residual.dtype if residual is not None else weight.dtype)


gemm = register_op("gemm", _gemm, _fake)
