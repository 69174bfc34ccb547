"""``wenet_trt::top_k_log_probs``: the k largest entries of ``log_softmax(x·Wᵀ + b)`` per row, and their labels.

What it computes is ``core.composite.top_k_log_probs``. The CTC searches read only each frame's top k (WeNet's
prefix beam search takes ``topk(beam)`` of every frame; greedy search the top 1).

Two kernels. The first is an output-layer GEMM (``token_log_probs.logits_tile``) whose epilogue writes, besides the
fp32 logits, what the top k needs: per row each tile's max and sum of exp(logit - max) (the log-normaliser's
parts) and the maximum of each group of G labels. The second, one program per row, finds the k best group maxima
(ties to the lower group), whose groups hold the row's k best labels, reads those k·G logits in one load and makes
the k picks among them (ties to the lower label): it never reads the whole row.

At 16,000 rows x 4,233 units (64 utterances x 10 s; H200) this takes 0.32 ms. Before, cuBLAS wrote the logits and
a top-k kernel read each row whole for its normaliser and group maxima: 0.14 + 0.26 ms. Picking inside the GEMM's
tiles instead (k passes over every tile, nothing written) took 0.54 ms, bound by the passes' arithmetic. At 250 rows
(batch 1) the two kernels take ~19 us in the engine against the old path's ~15.
"""

from __future__ import annotations

import torch

from core.composite import run_decomposition
from plugins import kernel_available, launchable, planned_size, register_op, tl, triton
from plugins.token_log_probs import config, precision

GROUP = 16  # labels per group maximum

if triton is not None:
    from plugins.token_log_probs import logits_tile, store_softmax_parts

    @triton.jit
    def _logits_kernel(X, W, BIAS, PARTS, LOGITS, GROUP_MAX, M, stride_xm, V: tl.constexpr, K: tl.constexpr,
                       SPLITS: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
                       BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
        rows, cols, logits = logits_tile(X, W, BIAS, M, stride_xm, V, K, BLOCK_M, BLOCK_V, BLOCK_K, PRECISION)
        store_softmax_parts(PARTS, logits, rows, M, SPLITS)
        width: tl.constexpr = SPLITS * BLOCK_V  # LOGITS (M, width): the padded columns hold -inf
        tl.store(LOGITS + rows[:, None].to(tl.int64) * width + cols[None, :], logits, mask=rows[:, None] < M)
        groups = tl.program_id(0) * (BLOCK_V // G) + tl.arange(0, BLOCK_V // G)
        group_max = tl.max(tl.reshape(logits, (BLOCK_M, BLOCK_V // G, G)), 2)
        tl.store(GROUP_MAX + rows[:, None] * (width // G) + groups[None, :], group_max, mask=rows[:, None] < M)

    @triton.jit
    def _pick_kernel(PARTS, LOGITS, GROUP_MAX, VALUES, LABELS, M, SPLITS: tl.constexpr, WIDTH: tl.constexpr,
                     TOPK: tl.constexpr, G: tl.constexpr, GROUPS: tl.constexpr, SP: tl.constexpr, KP: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        splits = tl.arange(0, SP)
        tile_max = tl.load(PARTS + splits * M + row, mask=splits < SPLITS, other=float("-inf"))
        tile_sum = tl.load(PARTS + (SPLITS + splits) * M + row, mask=splits < SPLITS, other=0.0)
        row_max = tl.max(tile_max, 0)
        log_total = tl.log(tl.sum(tile_sum * tl.exp(tile_max - row_max), 0))
        # The k best groups (by maximum, ties to the lower group) hold the k best labels: a label outside them has
        # k group maxima ranked above it. So their logits are loaded at once, and the k picks made among them.
        groups = tl.arange(0, GROUPS)
        group_max = tl.load(GROUP_MAX + row * (WIDTH // G) + groups, mask=groups < WIDTH // G, other=float("-inf"))
        slots = tl.arange(0, KP)
        best_groups = tl.zeros([KP], tl.int32)
        for i in tl.static_range(TOPK):
            _, group = tl.max(group_max, 0, return_indices=True, return_indices_tie_break_left=True)
            best_groups = tl.where(slots == i, group, best_groups)
            group_max = tl.where(groups == group, float("-inf"), group_max)
        labels = best_groups[:, None] * G + tl.arange(0, G)[None, :]
        logits = tl.load(LOGITS + row * WIDTH + labels, mask=slots[:, None] < TOPK, other=float("-inf"))
        for i in tl.static_range(TOPK):
            best = tl.max(tl.max(logits, 1), 0)
            label = tl.min(tl.min(tl.where(logits == best, labels, WIDTH), 1), 0)
            # as torch's log_softmax: (x - max) - log(sum(exp(x - max)))
            tl.store(VALUES + row * TOPK + i, (best - row_max) - log_total)
            tl.store(LABELS + row * TOPK + i, label)
            logits = tl.where(labels == label, float("-inf"), logits)


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int,
           **tiles) -> tuple[torch.Tensor, torch.Tensor]:
    """Both kernels on x (..., K) with the last dim contiguous, weight (R >= V, K), fp32 bias (V,); ``tiles``
    overrides ``config`` (benchmarks)."""
    inner = weight.shape[1]
    vocab = bias.shape[0]
    rows = x.reshape(-1, inner)
    m = rows.shape[0]
    meta = {**config(inner, planned_size(m)), **tiles}
    splits = triton.cdiv(vocab, meta["BLOCK_V"])
    width = splits * meta["BLOCK_V"]
    parts = torch.empty((2, splits, m), dtype=torch.float32, device=x.device)
    logits = torch.empty((m, width), dtype=torch.float32, device=x.device)
    group_max = torch.empty((m, width // GROUP), dtype=torch.float32, device=x.device)
    launchable(_logits_kernel)[(splits, triton.cdiv(m, meta["BLOCK_M"]))](
        rows, weight, bias, parts, logits, group_max, m, rows.stride(0), V=vocab, K=inner, SPLITS=splits, G=GROUP,
        PRECISION=precision(x), **meta)
    values = torch.empty((m, k), dtype=torch.float32, device=x.device)
    labels = torch.empty((m, k), dtype=torch.int32, device=x.device)
    # one warp: its reductions are shuffles alone (5.9 / 60.7 us against 7.4 / 90.8 on 2 warps at 250 / 16,000 rows, H200)
    launchable(_pick_kernel)[(m,)](parts, logits, group_max, values, labels, m, SPLITS=splits, WIDTH=width, TOPK=k,
                                   G=GROUP, GROUPS=triton.next_power_of_2(width // GROUP),
                                   SP=triton.next_power_of_2(splits), KP=triton.next_power_of_2(k), num_warps=1)
    shape = (*x.shape[:-1], k)
    return values.view(shape), labels.view(shape)


def decomposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The op through its decomposition (``core.composite.top_k_log_probs``), on any device."""
    return run_decomposition("top_k_log_probs", [x, weight, bias], {"k": k})


def _top_k_log_probs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    run = launch if kernel_available(x.device) else decomposed
    return run(x.contiguous(), weight.contiguous(), bias.contiguous(), k)


def _fake(x, weight, bias, k):
    shape = (*x.shape[:-1], k)
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.int32)


top_k_log_probs = register_op("top_k_log_probs", _top_k_log_probs, _fake)
