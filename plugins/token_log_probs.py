"""``wenet_trt::token_log_probs``: ``log_softmax(x·Wᵀ + b)[target]`` per row, the vocabulary logits never written.

What it computes is ``core.composite.token_log_probs``. Attention rescoring needs, per hypothesis token, only the
log-probability of that token. Unfused, the output layer writes (rows, vocab) fp32 logits and a second kernel reads
them back for the log-softmax and the gather: with 640 hypotheses of ~150 tokens and 4,233 units that is 1.6 GB
written and read per direction, as much time as the GEMM. Here each program computes a (BLOCK_M, BLOCK_V) tile of
logits in registers and reduces it at once to three numbers per row: the tile's max, its sum of exp(logit - max),
and the target's logit if the target falls in the tile. A small second pass combines the tiles of a row:
``log_prob = target_logit - (max + log(sum))``.
"""

from __future__ import annotations

import torch

from core.composite import run_decomposition
from plugins import MANY_ROWS, kernel_available, launchable, register_op, tl, triton

if triton is not None:

    @triton.jit
    def logits_tile(X, W, BIAS, M, stride_xm, V: tl.constexpr, K: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
        """Program (split, row block)'s rows, columns and (BLOCK_M, BLOCK_V) fp32 tile of ``x·Wᵀ + bias``, columns from
        V on -inf (every tile holds at least one real column). The vocabulary tile varies fastest over the programs:
        those running at once share their rows of x in L2."""
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):  # static bounds: Triton pipelines the loads (num_stages)
            x = tl.load(X + rows[:, None] * stride_xm + (k0 + ks)[None, :],
                        mask=(rows[:, None] < M) & ((k0 + ks)[None, :] < K), other=0.0)
            w = tl.load(W + cols[:, None] * K + (k0 + ks)[None, :],
                        mask=(cols[:, None] < V) & ((k0 + ks)[None, :] < K), other=0.0)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
        logits = acc + tl.load(BIAS + cols, mask=cols < V, other=0.0)[None, :]
        return rows, cols, tl.where(cols[None, :] < V, logits, float("-inf"))

    @triton.jit
    def store_softmax_parts(PARTS, logits, rows, M, SPLITS: tl.constexpr):
        """The tile's max and sum of exp(logit - max) per row, into PARTS (2, SPLITS, M) fp32 at this program's
        split; ``log_normalizer`` combines a row's splits."""
        tile_max = tl.max(logits, 1)
        out = PARTS + tl.program_id(0) * M + rows
        tl.store(out, tile_max, mask=rows < M)
        tl.store(out + SPLITS * M, tl.sum(tl.exp(logits - tile_max[:, None]), 1), mask=rows < M)

    @triton.jit
    def _token_log_probs_kernel(X, W, BIAS, TARGETS, PARTS, PICKED, M, stride_xm,
                                V: tl.constexpr, K: tl.constexpr, SPLITS: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                                PRECISION: tl.constexpr):
        rows, cols, logits = logits_tile(X, W, BIAS, M, stride_xm, V, K, BLOCK_M, BLOCK_V, BLOCK_K, PRECISION)
        store_softmax_parts(PARTS, logits, rows, M, SPLITS)
        target = tl.load(TARGETS + rows, mask=rows < M, other=-1)
        picked = tl.sum(tl.where(cols[None, :] == target[:, None], logits, 0.0), 1)
        tl.store(PICKED + tl.program_id(0) * M + rows, picked, mask=rows < M)


def log_normalizer(parts: torch.Tensor) -> torch.Tensor:
    """Each row's log(sum(exp(logits))) from its splits' (max, sum of exp(logit - max)), parts (2, SPLITS, M)."""
    tile_max, tile_sum = parts.unbind(0)
    row_max = tile_max.amax(0)
    return row_max + torch.log((tile_sum * torch.exp(tile_max - row_max)).sum(0))


def config(k: int, rows: int = MANY_ROWS) -> dict:
    """Tiles for inner dim k and the planned row count (``plugins.planned_size``). Up to 1,024 rows, half as tall on
    half the warps: the CTC head's (768 -> 4,233) at 250 / 1,000 rows took 17.0 / 31.4 us against 17.2 / 34.5 (H200);
    the rescoring head at ~200 rows gained nothing (29.3 against 29.2 us, H200)."""
    tall = rows > 1024
    return {"BLOCK_M": 128 if tall else 64, "BLOCK_V": 128, "BLOCK_K": min(64, triton.next_power_of_2(k)),
            "num_warps": 8 if tall else 4, "num_stages": 3}


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
           **tiles) -> torch.Tensor:
    """The kernel and the combining pass on x (..., K) with the last dim contiguous; ``tiles`` overrides
    ``config`` (benchmarks)."""
    k = weight.shape[1]
    vocab = bias.shape[0]
    rows = x.reshape(-1, k)
    m = rows.shape[0]
    meta = {**config(k), **tiles}
    splits = triton.cdiv(vocab, meta["BLOCK_V"])
    parts = torch.empty((2, splits, m), dtype=torch.float32, device=x.device)
    picked = torch.empty((splits, m), dtype=torch.float32, device=x.device)
    launchable(_token_log_probs_kernel)[(splits, triton.cdiv(m, meta["BLOCK_M"]))](
        rows, weight, bias, targets.reshape(-1), parts, picked, m, rows.stride(0), V=vocab, K=k, SPLITS=splits,
        PRECISION=precision(x), **meta)
    return (picked.sum(0) - log_normalizer(parts)).view(targets.shape)


def precision(x: torch.Tensor) -> str:
    """The dot's input precision: fp32 products for fp32 operands (half ones have no choice)."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def decomposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The op through its decomposition (``core.composite.token_log_probs``), on any device."""
    return run_decomposition("token_log_probs", [x, weight, bias, targets], {})


def _token_log_probs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    run = launch if kernel_available(x.device) else decomposed
    return run(x.contiguous(), weight.contiguous(), bias.contiguous(), targets.contiguous())


def _fake(x, weight, bias, targets):
    return targets.new_empty(targets.shape, dtype=torch.float32)


token_log_probs = register_op("token_log_probs", _token_log_probs, _fake)
