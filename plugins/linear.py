"""``wenet_trt::linear_act``: ``act(x·Wᵀ + b)`` as one Triton GEMM with the bias and activation in its epilogue.

What it computes is ``core.composite.linear_act``, except that the product stays fp32 up to the output (the
decomposition rounds it to x's dtype, as a separate GEMM would). cuBLAS has no swish epilogue, so an FFN's first GEMM
wrote its (rows, 2,048) output and a second kernel read it back for bias + swish: at batch 64 x 10 s that pass took
longer than the GEMM (H200). Here each output tile is finished in registers and written once. The conv module's first
pointwise convolution takes glu: each program accumulates an output tile's value and gate columns side by side and
writes their product, half the GEMM's width, once, in fp32 (Inductor had recomputed the GLU for each depthwise tap).
The weight keeps torch's (N, K) layout; K and N are build-time constants, so the K loop is static and the kernel is
specialised per shape.
"""

from __future__ import annotations

import torch

from core.composite import run_decomposition
from core.dtype import DataType
from core.ops import linear_act_features
from plugins import MANY_ROWS, kernel_available, launchable, planned_size, register_op, swish, times_sigmoid, tl, triton

if triton is not None:

    @triton.jit
    def _linear_act_kernel(X, W, BIAS, OUT, M, stride_xm, stride_om,
                           N: tl.constexpr, K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr, PRECISION: tl.constexpr):
        # N output columns; for glu each reads weight rows n (value) and N + n (gate), two accumulators
        # tiles in groups of GROUP_M row blocks, so that consecutive programs share weight tiles in L2
        pid = tl.program_id(0)
        blocks_m = tl.cdiv(M, BLOCK_M)
        blocks_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
        group = pid // (GROUP_M * blocks_n)
        first_m = group * GROUP_M
        group_m = tl.minimum(blocks_m - first_m, GROUP_M)
        block_m = first_m + (pid % (GROUP_M * blocks_n)) % group_m
        block_n = (pid % (GROUP_M * blocks_n)) // group_m
        rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):  # static bounds: Triton pipelines the loads (num_stages)
            x = tl.load(X + rows[:, None] * stride_xm + (k0 + ks)[None, :],
                        mask=(rows[:, None] < M) & ((k0 + ks)[None, :] < K), other=0.0)
            w_mask = (cols[:, None] < N) & ((k0 + ks)[None, :] < K)
            w = tl.load(W + cols[:, None] * K + (k0 + ks)[None, :], mask=w_mask, other=0.0)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
            if ACT == "glu":
                w = tl.load(W + (N + cols)[:, None] * K + (k0 + ks)[None, :], mask=w_mask, other=0.0)
                gate = tl.dot(x, tl.trans(w), gate, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(BIAS + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            if ACT == "glu":
                gate += tl.load(BIAS + N + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        if ACT == "relu":
            acc = tl.maximum(acc, 0.0)
        elif ACT == "swish":
            acc = swish(acc)
        elif ACT == "glu":
            acc = times_sigmoid(acc, gate)
        tl.store(OUT + rows[:, None] * stride_om + cols[None, :], acc.to(OUT.dtype.element_ty),
                 mask=(rows[:, None] < M) & (cols[None, :] < N))


def config(n: int, k: int, activation: str = "swish", rows: int = MANY_ROWS) -> dict:
    """Tile sizes for n output columns, from the static dims and the planned row count (``plugins.planned_size``: in a
    compiled program the row count is a symbol, whose opt size is read, never branched on). 64 x 128 tiles with 4
    warps were the best or within 14 % of the best of 12 tilings at every shape of ``benchmarks/linear_act.py`` (H200;
    250 to 1.3 M rows); up to 512 rows, 64 x 64 tiles give more programs (an FFN's w_1 at 250 rows: 3.41 against 3.87
    us). Swish (``plugins.swish``) over more than 1,024 rows takes 128 x 128 tiles on 8 warps (FFN w_1, us, against
    64 x 128 on 4: 8.12 / 9.19 at 2,000 rows, 14.83 / 16.24 at 4,112, 54.13 / 56.89 at 16,448; 5.80 / 5.23 at 1,000;
    H200, session 31). glu's two accumulators take 128 x 64 tiles on 8 warps (14.8 us at 16,448 x 256 -> 512, against 17.0 for
    64 x 64 on 4 warps and 11.0 for cuBLAS's product alone), and narrow ones for few rows (at 250 / 1,000 rows:
    16 x 32 2.85 us, 64 x 32 3.27 us, against 5.1 and 5.3 for 128 x 64)."""
    block_k = min(64, triton.next_power_of_2(k))
    if activation == "glu":
        if rows <= 1024:
            return {"BLOCK_M": 16 if rows <= 512 else 64, "BLOCK_N": 32, "BLOCK_K": block_k, "GROUP_M": 8,
                    "num_warps": 4, "num_stages": 3}
        return {"BLOCK_M": 128, "BLOCK_N": 64 if n >= 64 else max(16, triton.next_power_of_2(n)),
                "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    if activation == "swish" and rows > 1024 and n >= 128:
        return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    widest = 64 if rows <= 512 else 128
    block_n = widest if n >= widest else max(16, triton.next_power_of_2(n))
    return {"BLOCK_M": 64, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str,
           out_dtype: torch.dtype | None = None, **tiles) -> torch.Tensor:
    """The kernel on x (..., K) with the last dim contiguous; ``tiles`` overrides ``config`` (benchmarks)."""
    k = weight.shape[1]
    n = linear_act_features(weight.shape[0], activation)
    rows = x.reshape(-1, k)
    m = rows.shape[0]
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    meta = {**config(n, k, activation, planned_size(m)), **tiles}
    launchable(_linear_act_kernel)[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)](
        rows, weight, bias if bias is not None else weight, out, m, rows.stride(0), out.stride(0),
        N=n, K=k, ACT=activation, HAS_BIAS=bias is not None, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        **meta)
    return out.view(*x.shape[:-1], n)


def decomposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The op through its decomposition (``core.composite.linear_act``), on any device."""
    inputs = [x, weight] + ([bias] if bias is not None else [])
    attrs = {"activation": activation, "has_bias": bias is not None}
    if out_dtype is not None and out_dtype != x.dtype:
        attrs["out_dtype"] = DataType.from_torch(out_dtype).value
    return run_decomposition("linear_act", inputs, attrs)


def _linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    run = launch if kernel_available(x.device) else decomposed
    return run(x.contiguous(), weight.contiguous(), bias, activation, out_dtype)


def _fake(x, weight, bias, activation, out_dtype=None):
    return x.new_empty((*x.shape[:-1], linear_act_features(weight.shape[0], activation)), dtype=out_dtype or x.dtype)


linear_act = register_op("linear_act", _linear_act, _fake)
