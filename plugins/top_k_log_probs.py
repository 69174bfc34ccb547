"""``wenet_trt::top_k_log_probs``: the k largest entries of ``log_softmax(x[..., :V] + bias)`` per row, and their
labels, the log-probs never written.

What it computes is ``core.composite.top_k_log_probs``. The CTC searches read only each frame's top k (WeNet's
prefix beam search takes ``topk(beam)`` of every frame; greedy search the top 1). Unfused, the encoder wrote (rows, V)
fp32 log-probs and ``torch.topk`` read them back: at 64 utterances x 10 s (16,000 rows, 4,233 units) the log-softmax
took 0.31 ms and the top-k 1.04 ms (H200).

Here one program per row reads its logits once, as (groups, G) labels, for the log-normaliser and each group's
maximum. Each of the k picks then takes the best group maximum (ties to the lower group), re-reads that group's G
logits (an L1/L2 hit) without the labels already picked, takes their best (ties to the lower label) and renews the
group's maximum. A pick so touches groups + G values, not the row: picking over the whole row, each pick one (value,
label) reduction over all of it, took 0.45-0.55 ms at the size above; this takes 0.26 ms.
"""

from __future__ import annotations

import torch

from core.composite import run_decomposition
from plugins import kernel_available, launchable, register_op, tl, triton

if triton is not None:

    @triton.jit
    def _top_k_log_probs_kernel(X, BIAS, VALUES, LABELS, stride_x, V: tl.constexpr, K: tl.constexpr,
                                GROUPS: tl.constexpr, G: tl.constexpr, KP: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = X + row * stride_x
        groups = tl.arange(0, GROUPS)
        members = tl.arange(0, G)
        labels = groups[:, None] * G + members[None, :]
        x = (tl.load(x_row + labels, mask=labels < V, other=float("-inf"))
             + tl.load(BIAS + labels, mask=labels < V, other=0.0))
        group_max = tl.max(x, 1)
        row_max = tl.max(group_max, 0)
        # as torch's log_softmax: (x - max) - log(sum(exp(x - max)))
        log_total = tl.log(tl.sum(tl.sum(tl.exp(x - row_max), 1), 0))
        slots = tl.arange(0, KP)
        picked = tl.full([KP], -1, tl.int32)
        for i in tl.static_range(K):
            best, group = tl.max(group_max, 0, return_indices=True, return_indices_tie_break_left=True)
            member_labels = group * G + members
            left = (member_labels < V) & (tl.sum((member_labels[:, None] == picked[None, :]).to(tl.int32), 1) == 0)
            # the same fp32 sums as above, so the group's best equals ``best`` exactly
            values = (tl.load(x_row + member_labels, mask=left, other=float("-inf"))
                      + tl.load(BIAS + member_labels, mask=left, other=0.0))
            _, member = tl.max(values, 0, return_indices=True, return_indices_tie_break_left=True)
            tl.store(VALUES + row * K + i, (best - row_max) - log_total)
            tl.store(LABELS + row * K + i, group * G + member)
            picked = tl.where(slots == i, group * G + member, picked)
            group_max = tl.where(groups == group, tl.max(tl.where(members == member, float("-inf"), values), 0),
                                 group_max)


def config(vocab: int, k: int) -> dict:
    """Groups of 16 labels, 2 warps: the fastest of groups of 16 / 32 / 64 on 2 / 4 / 8 warps at every size measured
    (H200, 4,233 units, k = 10: 16,320 rows 0.26 ms, 4,080 rows 0.067 ms, 255 rows 0.010 ms)."""
    group = 16
    return {"GROUPS": triton.next_power_of_2(triton.cdiv(vocab, group)), "G": group,
            "KP": triton.next_power_of_2(k), "num_warps": 2}


def launch(x: torch.Tensor, bias: torch.Tensor, k: int, **tiles) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel on fp32 x (..., R >= V) with the last dim contiguous, fp32 bias (V,); ``tiles`` overrides
    ``config`` (benchmarks)."""
    vocab = bias.shape[0]
    rows = x.reshape(-1, x.shape[-1])
    values = torch.empty((rows.shape[0], k), dtype=torch.float32, device=x.device)
    labels = torch.empty((rows.shape[0], k), dtype=torch.int32, device=x.device)
    meta = {**config(vocab, k), **tiles}
    launchable(_top_k_log_probs_kernel)[(rows.shape[0],)](rows, bias, values, labels, rows.stride(0), V=vocab, K=k,
                                                           **meta)
    shape = (*x.shape[:-1], k)
    return values.view(shape), labels.view(shape)


def decomposed(x: torch.Tensor, bias: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The op through its decomposition (``core.composite.top_k_log_probs``), on any device."""
    return run_decomposition("top_k_log_probs", [x, bias], {"k": k})


def _top_k_log_probs(x: torch.Tensor, bias: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    run = launch if kernel_available(x.device) else decomposed
    return run(x.contiguous(), bias.contiguous(), k)


def _fake(x, bias, k):
    shape = (*x.shape[:-1], k)
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.int32)


top_k_log_probs = register_op("top_k_log_probs", _top_k_log_probs, _fake)
