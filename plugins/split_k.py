"""``wenet_trt::split_k_products``: a half GEMM over few rows, split over K where K is long.

Why: at batch 1 a GEMM is a handful of output tiles and takes cuBLAS ~3 us however small (H200, 250 rows: 256 ->
256 in 3.0 us), and an FFN's second GEMM (2,048 -> 256), whose tiles each loop over all of K, 5.1 us: chains of
dependent loads. Here narrow tiles give more programs (2.4 us for 256 -> 256), and a long K is split into shares of
``SPLIT_K``: each program loops over one share and writes its fp32 partial product (3.3 us for 2,048 -> 256).
``matmul`` sums the partials in plain ops, in a fixed order (deterministic), which Inductor fuses into whatever
reads the product (after an FFN, the residual add and the next LayerNorm: 6.3 against 7.1 us for both kernels), and
rounds the sum to the inputs' dtype once, as the GEMM would. The matmul op's PyTorch lowering (``core.ops.MatMul``)
takes this path for the few planned rows of a batch-1 program; at 1,000 rows cuBLAS is faster.
"""

from __future__ import annotations

import torch

from plugins import kernel_available, launchable, planned_size, register_op, tl, triton

SPLIT_K = 256  # K per share: four 64-deep steps
FEW_ROWS = 512  # planned rows up to which ``matmul`` takes the plugin


if triton is not None:

    @triton.jit
    def _split_k_kernel(A, W, OUT, M, stride_am, N: tl.constexpr, K: tl.constexpr, K_SHARE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # program (tile, share): rows x cols of a·wᵀ over K's share-th part, written to OUT[share]
        blocks_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
        tile = tl.program_id(0)
        share = tl.program_id(1)
        rows = (tile // blocks_n) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = (tile % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for step in range(0, K_SHARE, BLOCK_K):  # static bounds: Triton pipelines the loads
            k = share * K_SHARE + step + ks
            a = tl.load(A + rows[:, None] * stride_am + k[None, :], mask=(rows[:, None] < M) & (k[None, :] < K),
                        other=0.0)
            w = tl.load(W + cols[:, None] * K + k[None, :], mask=(cols[:, None] < N) & (k[None, :] < K), other=0.0)
            acc = tl.dot(a, tl.trans(w), acc)
        tl.store(OUT + share * M * N + rows[:, None] * N + cols[None, :], acc.to(OUT.dtype.element_ty),
                 mask=(rows[:, None] < M) & (cols[None, :] < N))


def shares(k: int) -> int:
    """K's shares: one per ``SPLIT_K`` (the last one partial where K is not a multiple) where that makes four or
    more, else one."""
    count = -(-k // SPLIT_K)
    return count if count >= 4 else 1


def config(n: int, k: int) -> dict:
    """Tiles (H200, 250 rows, us; ``.data/gpu/probe270``, 27 tilings): split products on 64 x 64 (2,048 -> 256: 3.34
    against 3.95 for 32 x 64), one pass on 32 columns, 16 rows where N is 256 (2.39 against 2.53 for 64 rows) and
    64 for a wider N (256 -> 768: 2.60 against 3.12 for 16 rows)."""
    if shares(k) > 1:
        return {"block_m": 64, "block_n": 64}
    return {"block_m": 16 if n <= 256 else 64, "block_n": 32}


def launch(a: torch.Tensor, weight: torch.Tensor, block_m: int, block_n: int, block_k: int = 64, num_warps: int = 4,
           num_stages: int = 3) -> torch.Tensor:
    """(shares, M, N) partial products of rows a (M, K) and a torch-layout weight (N, K), both contiguous: fp32, or
    a's dtype for one share."""
    m, k = a.shape
    n = weight.shape[0]
    count = shares(k)
    out = torch.empty((count, m, n), dtype=torch.float32 if count > 1 else a.dtype, device=a.device)
    launchable(_split_k_kernel)[(triton.cdiv(m, block_m) * triton.cdiv(n, block_n), count)](
        a, weight, out, m, a.stride(0), N=n, K=k, K_SHARE=SPLIT_K if count > 1 else k, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    return out


def _split_k_products(a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return launch(a.contiguous(), weight.contiguous(), **config(weight.shape[0], weight.shape[1]))


def _fake(a, weight):
    count = shares(a.shape[1])
    return a.new_empty((count, a.shape[0], weight.shape[0]), dtype=torch.float32 if count > 1 else a.dtype)


split_k_products = register_op("split_k_products", _split_k_products, _fake)


def takes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``matmul`` serves a (..., K) @ b (K, N): a half GEMM on a device where the kernel runs, b a transposed
    torch-layout weight, few planned rows (``plugins.planned_size``)."""
    rows = a.numel() // a.shape[-1] if a.ndim > 1 else 1
    return (kernel_available(a.device) and a.dtype in (torch.float16, torch.bfloat16) and b.ndim == 2
            and b.t().is_contiguous() and planned_size(rows) <= FEW_ROWS)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., K) @ b (K, N) in a's dtype: the split products summed in order in fp32, rounded once."""
    partials = split_k_products(a.reshape(-1, a.shape[-1]), b.t()).unbind(0)
    total = partials[0]
    for partial in partials[1:]:
        total = total + partial
    return total.to(a.dtype).view(*a.shape[:-1], b.shape[-1])
