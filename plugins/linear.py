"""``wenet_trt::linear_act``: ``act(x·Wᵀ + b)`` as one Triton GEMM with the bias and activation in its epilogue.

What it computes is ``core.composite.linear_act``. cuBLAS has no swish epilogue, so an FFN's first GEMM wrote its
(rows, 2,048) output and a second kernel read it back for bias + swish: at batch 64 x 10 s that pass took longer
than the GEMM (H200). Here each output tile is finished in registers and written once. The weight keeps torch's
(N, K) layout; K and N are build-time constants, so the K loop is static and the kernel is specialised per shape.
"""

from __future__ import annotations

import torch

from core.composite import run_decomposition
from plugins import kernel_available, launchable, register_op, tl, triton

if triton is not None:

    @triton.jit
    def _linear_act_kernel(X, W, BIAS, OUT, M, stride_xm, stride_om,
                           N: tl.constexpr, K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr, PRECISION: tl.constexpr):
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
        for k0 in range(0, K, BLOCK_K):  # static bounds: Triton pipelines the loads (num_stages)
            x = tl.load(X + rows[:, None] * stride_xm + (k0 + ks)[None, :],
                        mask=(rows[:, None] < M) & ((k0 + ks)[None, :] < K), other=0.0)
            w = tl.load(W + cols[:, None] * K + (k0 + ks)[None, :],
                        mask=(cols[:, None] < N) & ((k0 + ks)[None, :] < K), other=0.0)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(BIAS + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        if ACT == "relu":
            acc = tl.maximum(acc, 0.0)
        elif ACT == "swish":
            acc = acc * tl.sigmoid(acc)
        tl.store(OUT + rows[:, None] * stride_om + cols[None, :], acc.to(OUT.dtype.element_ty),
                 mask=(rows[:, None] < M) & (cols[None, :] < N))


def config(n: int, k: int) -> dict:
    """Tile sizes from the static dims only: under torch.export and Inductor the row count is a symbol, and a
    branch on it would specialise the engine to the traced size. 64 x 128 tiles with 4 warps were the best or
    within 14 % of the best of 12 tilings at every shape of ``benchmarks/linear_act.py`` (H200; 250 to 1.3 M rows)."""
    block_k = min(64, triton.next_power_of_2(k))
    block_n = 128 if n >= 128 else max(16, triton.next_power_of_2(n))
    return {"BLOCK_M": 64, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str,
           **tiles) -> torch.Tensor:
    """The kernel on x (..., K) with the last dim contiguous; ``tiles`` overrides ``config`` (benchmarks)."""
    n, k = weight.shape
    rows = x.reshape(-1, k)
    m = rows.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    meta = {**config(n, k), **tiles}
    launchable(_linear_act_kernel)[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)](
        rows, weight, bias if bias is not None else weight, out, m, rows.stride(0), out.stride(0),
        N=n, K=k, ACT=activation, HAS_BIAS=bias is not None, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        **meta)
    return out.view(*x.shape[:-1], n)


def decomposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """The op through its decomposition (``core.composite.linear_act``), on any device."""
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return run_decomposition("linear_act", inputs, {"activation": activation, "has_bias": bias is not None})


def _linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    run = launch if kernel_available(x.device) else decomposed
    return run(x.contiguous(), weight.contiguous(), bias, activation)


def _fake(x, weight, bias, activation):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


linear_act = register_op("linear_act", _linear_act, _fake)
