"""``wenet_trt::attention``: fused multi-head attention as one Triton kernel.

What it computes is ``core.composite.attention`` (plain, causal, or WeNet's relative-position
scores (q+u)·kᵀ + (q+v)·posᵀ; a key-length mask, or a tree mask for hypotheses as a prefix tree; softmax in
fp32). The kernel makes one pass over
the keys per block of queries with an online softmax (flash attention): scores never reach
memory, and the relative-position term costs a second dot product per key block instead of two
(B, H, T, T) tensors. Cross-attention needs nothing special: the N hypotheses' queries of an
utterance are rows of one (B, H, N*L, D) query tensor against that utterance's K/V. The Q/K/V
projections' biases are added as the tiles load, so Q, K and V arrive as strided views of one
bias-free GEMM output: a separate bias add wrote each of them out again in the heads layout. Under a
tree mask, a block of keys none of whose subtrees holds a query of the block is skipped: a query sees
only its ancestors, a few blocks of a trie of thousands of nodes. Packed rows (the rescoring decoder's tries back
to back, no padding rows) are loaded through their (B, M) row table, so the kernel still works per utterance, and a
block of padding slots only writes its zeros; given the packed rows' slots, each query's output goes to its packed row
(a gather of the padded layout after the kernel took ~50 us per decoder layer and direction at batch 64, 120 tokens).

Registered with ``torch.library.triton_op``, so torch.export and Inductor see the kernel itself
and compile it into the engines. Where no kernel can run (CPU without ``TRITON_INTERPRET=1``, or
no Triton) the op runs the decomposition.
"""

from __future__ import annotations

import torch

from core.composite import run_decomposition
from plugins import _INTERPRETED, MANY_ROWS, kernel_available, launchable, planned_size, register_op, tl, triton

if triton is not None:

    @triton.jit
    def _attend_key_block(start, acc, row_max, row_sum, q_u, q_v, k_bias, v_bias, rows, present, n_end, block_m, b, h,
                          K, V, P, KEY_ENDS, ROWS, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                          stride_pb, stride_ph, stride_pn, stride_eb, stride_rb, M, N, scale,
                          HAS_KEY_ENDS: tl.constexpr, HAS_POS: tl.constexpr, CAUSAL: tl.constexpr,
                          PACKED_KV: tl.constexpr, HAS_KV_BIAS: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          PRECISION: tl.constexpr):
        """One block of keys from ``start`` into the online softmax: (acc, row_max, row_sum) updated."""
        d = tl.arange(0, BLOCK_D)
        dv = tl.arange(0, BLOCK_DV)
        cols = start + tl.arange(0, BLOCK_N)
        visible = True
        if HAS_KEY_ENDS:  # skip a block whose subtrees all end before the block's first query
            ends = tl.load(KEY_ENDS + b * stride_eb + cols, mask=cols < n_end, other=0)
            visible = tl.max(ends, 0) > block_m * BLOCK_M
        if visible:
            key_ok = cols < n_end
            k_rows = cols
            if PACKED_KV:  # keys packed as the queries; stride_kb and stride_vb are 0
                k_rows = tl.load(ROWS + b * stride_rb + cols, mask=key_ok, other=-1)
                key_ok = k_rows >= 0
                k_rows = tl.maximum(k_rows, 0)
            k = tl.load(K + b * stride_kb + h * stride_kh + k_rows[None, :] * stride_kn + d[:, None],
                        mask=key_ok[None, :] & (d[:, None] < D), other=0.0)
            if HAS_KV_BIAS:
                k = (k.to(tl.float32) + k_bias[:, None]).to(q_u.dtype)
            s = tl.dot(q_u, k, input_precision=PRECISION)
            if HAS_POS:
                p = tl.load(P + b * stride_pb + h * stride_ph + cols[None, :] * stride_pn + d[:, None],
                            mask=(cols[None, :] < n_end) & (d[:, None] < D), other=0.0)
                s += tl.dot(q_v, p, input_precision=PRECISION)
            keep = key_ok[None, :] & present[:, None]
            if CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None] + N - M)
            if HAS_KEY_ENDS:  # ancestors: j <= i < ends[j]
                keep = keep & (cols[None, :] <= rows[:, None]) & (rows[:, None] < ends[None, :])
            s = tl.where(keep, s * scale, float("-inf")).to(tl.float32)  # scale may arrive as an fp64 constant
            new_max = tl.maximum(row_max, tl.max(s, 1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows with nothing attended yet
            weights = tl.exp(s - shift[:, None])
            correction = tl.exp(row_max - shift)
            row_sum = row_sum * correction + tl.sum(weights, 1)
            v = tl.load(V + b * stride_vb + h * stride_vh + k_rows[:, None] * stride_vn + dv[None, :],
                        mask=key_ok[:, None] & (dv[None, :] < DV), other=0.0)
            if HAS_KV_BIAS:
                v = (v.to(tl.float32) + v_bias[None, :]).to(q_u.dtype)
            acc = acc * correction[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=PRECISION)
            row_max = new_max
        return acc, row_max, row_sum

    @triton.jit
    def _attention_kernel(Q, K, V, P, BIAS_U, BIAS_V, Q_BIAS, K_BIAS, V_BIAS, LENGTHS, KEY_ENDS, ROWS, OUT,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_pb, stride_ph, stride_pn,
                          stride_ob, stride_oh, stride_om, stride_eb, stride_rb,
                          heads, M, N, scale,
                          HAS_LENGTHS: tl.constexpr, HAS_KEY_ENDS: tl.constexpr, HAS_POS: tl.constexpr,
                          CAUSAL: tl.constexpr, HAS_ROWS: tl.constexpr, PACKED_KV: tl.constexpr, PACKED_OUT: tl.constexpr,
                          HAS_Q_BIAS: tl.constexpr, HAS_KV_BIAS: tl.constexpr,
                          D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        block_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        dv = tl.arange(0, BLOCK_DV)
        present = rows < M
        q_rows = rows
        if HAS_ROWS:  # packed: query m of row b is packed row ROWS[b, m] (none where < 0); stride_qb is 0
            q_rows = tl.load(ROWS + b * stride_rb + rows, mask=present, other=-1)
            present = q_rows >= 0
            q_rows = tl.maximum(q_rows, 0)
        q = tl.load(Q + b * stride_qb + h * stride_qh + q_rows[:, None] * stride_qm + d[None, :],
                    mask=present[:, None] & (d[None, :] < D), other=0.0)
        # projection biases added as the tiles load, rounded as the unfused add rounds them (fp32, then q's dtype)
        if HAS_Q_BIAS:
            q = (q.to(tl.float32) + tl.load(Q_BIAS + h * D + d, mask=d < D, other=0.0).to(tl.float32)[None, :]).to(q.dtype)
        k_bias = 0.0  # (unread without the biases)
        v_bias = 0.0
        if HAS_KV_BIAS:
            k_bias = tl.load(K_BIAS + h * D + d, mask=d < D, other=0.0).to(tl.float32)
            v_bias = tl.load(V_BIAS + h * DV + dv, mask=dv < DV, other=0.0).to(tl.float32)
        if HAS_POS:  # (q + u) and (q + v) rounded to q's dtype, as the unfused layer computes them
            q_u = (q + tl.load(BIAS_U + h * D + d, mask=d < D, other=0.0)[None, :]).to(q.dtype)
            q_v = (q + tl.load(BIAS_V + h * D + d, mask=d < D, other=0.0)[None, :]).to(q.dtype)
        else:
            q_u = q
            q_v = q
        n_end = N
        if HAS_LENGTHS:
            n_end = tl.minimum(tl.load(LENGTHS + b), N)
        if CAUSAL or HAS_KEY_ENDS:  # no key beyond the block's last query (offset N - M) is ever attended
            n_end = tl.minimum(n_end, (block_m + 1) * BLOCK_M + N - M)
        if HAS_ROWS:  # a block of padding only: nothing to attend
            n_end = tl.where(tl.max(present.to(tl.int32), 0) > 0, n_end, 0)
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        # a for loop, which Triton software-pipelines (the next block's K/V loads overlap this block's math); the
        # interpreter cannot range() over a loaded bound, so there the same blocks go by a while loop
        if _INTERPRETED:
            start = 0
            while start < n_end:
                acc, row_max, row_sum = _attend_key_block(
                    start, acc, row_max, row_sum, q_u, q_v, k_bias, v_bias, rows, present, n_end, block_m, b, h,
                    K, V, P, KEY_ENDS, ROWS, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                    stride_pb, stride_ph, stride_pn, stride_eb, stride_rb, M, N, scale, HAS_KEY_ENDS, HAS_POS, CAUSAL,
                    PACKED_KV, HAS_KV_BIAS, D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, PRECISION)
                start += BLOCK_N
        else:
            for start in tl.range(0, n_end, BLOCK_N):
                acc, row_max, row_sum = _attend_key_block(
                    start, acc, row_max, row_sum, q_u, q_v, k_bias, v_bias, rows, present, n_end, block_m, b, h,
                    K, V, P, KEY_ENDS, ROWS, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                    stride_pb, stride_ph, stride_pn, stride_eb, stride_rb, M, N, scale, HAS_KEY_ENDS, HAS_POS, CAUSAL,
                    PACKED_KV, HAS_KV_BIAS, D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, PRECISION)
        out = tl.where(row_sum[:, None] > 0, acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None], 0.0)
        if PACKED_OUT:  # each query's output to its packed row, as q came: no gather of the padded layout after
            tl.store(OUT + h * stride_oh + q_rows[:, None] * stride_om + dv[None, :], out.to(OUT.dtype.element_ty),
                     mask=present[:, None] & (dv[None, :] < DV))
        else:
            tl.store(OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + dv[None, :],
                     out.to(OUT.dtype.element_ty), mask=(rows[:, None] < M) & (dv[None, :] < DV))


def config(head_dim: int, has_pos: bool, tree: bool, rows: int = MANY_ROWS) -> dict:
    """Tiles for a head dim (rounded up to a power of two), the position term, a tree mask and the planned query rows
    in all (``plugins.planned_size``)."""
    if rows <= 1024 and head_dim <= 64:
        # few queries: more, smaller programs over longer key blocks. H200, us: the encoder at batch 1 x 10 s 5.12
        # against 6.50 on 8 warps unpipelined and 8.26 for the many-rows tiles (session 26); the rescoring decoder at
        # batch 1 over chain tries of 10 x 20 tokens, cross-attention 5.23 against 6.59 and the tree 7.16 against
        # 7.22, of 10 x 124 tokens (a lone 10 s file's) the tree 14.34 against 17.12 (session 30)
        return {"BLOCK_M": 16, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2}
    # finer key blocks skip more of a tree (H200, 64 x 4 heads x 2,367 nodes: 0.44 / 0.66 ms).
    # Prefetching the next key block pays only for plain K/V (cross-attention: 22.8 against 25.3 us at 64 x 10 s, H200);
    # with the position term's third tile it cost occupancy (36.6 against 33.0 us, the encoder at 64 x 10 s), and a
    # tree's block skip is a branch the pipeliner does not cross
    return {"BLOCK_M": 64, "BLOCK_N": 32 if tree or head_dim > 64 else 64, "num_warps": 4,
            "num_stages": 1 if has_pos or tree else 3}


def _launch(q, k, v, key_lengths, key_ends, rows, slots, pos, pos_bias_u, pos_bias_v, q_bias, k_bias, v_bias, scale,
            causal, packed_kv=False, **tiles):
    """The kernel; ``tiles`` overrides its tiling (benchmarks)."""
    # No Python branch on a size here but through planned_size: under torch.export and Inductor sizes are symbols,
    # and a branch would specialize the compiled engine to the traced size.
    heads, d = q.shape[1], q.shape[3]
    batch, m = rows.shape if rows is not None else (q.shape[0], q.shape[2])
    n, dv = (m if packed_kv else k.shape[2]), v.shape[3]
    # (B, M, H, Dv) memory seen as (B, H, M, Dv): merging the heads afterwards is a free view; packed, (1, P, H, Dv)
    out_rows = (1, slots.shape[0]) if slots is not None else (batch, m)
    out = torch.empty((*out_rows, heads, dv), dtype=v.dtype, device=q.device).transpose(1, 2)
    has_pos = pos is not None
    p = pos.expand(batch, -1, -1, -1) if has_pos else k  # broadcast over the batch: stride 0
    # packed rows are found through ``rows``, whatever the batch row: no batch stride
    q_batch_stride = 0 if rows is not None else q.stride(0)
    kv_batch_strides = (0, 0) if packed_kv else (k.stride(0), v.stride(0))
    block_d, block_dv = triton.next_power_of_2(d), triton.next_power_of_2(dv)
    launchable(_attention_kernel)[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), batch * heads)](
        q, k, v, p, pos_bias_u if has_pos else q, pos_bias_v if has_pos else q,
        q_bias if q_bias is not None else q, k_bias if k_bias is not None else q, v_bias if v_bias is not None else q,
        key_lengths if key_lengths is not None else q, key_ends if key_ends is not None else q,
        rows if rows is not None else q, out,
        q_batch_stride, q.stride(1), q.stride(2), kv_batch_strides[0], k.stride(1), k.stride(2),
        kv_batch_strides[1], v.stride(1), v.stride(2), p.stride(0), p.stride(1), p.stride(2),
        out.stride(0), out.stride(1), out.stride(2), key_ends.stride(0) if key_ends is not None else 0,
        rows.stride(0) if rows is not None else 0,
        heads, m, n, scale,
        HAS_LENGTHS=key_lengths is not None, HAS_KEY_ENDS=key_ends is not None, HAS_POS=has_pos, CAUSAL=causal,
        HAS_ROWS=rows is not None, PACKED_KV=packed_kv, PACKED_OUT=slots is not None,
        HAS_Q_BIAS=q_bias is not None, HAS_KV_BIAS=k_bias is not None, D=d, DV=dv,
        BLOCK_D=block_d, BLOCK_DV=block_dv, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **{**config(max(block_d, block_dv), has_pos, key_ends is not None, planned_size(batch * m)), **tiles})
    return out


def decomposed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None,
               key_ends: torch.Tensor | None, rows: torch.Tensor | None, slots: torch.Tensor | None,
               pos: torch.Tensor | None, pos_bias_u: torch.Tensor | None, pos_bias_v: torch.Tensor | None,
               q_bias: torch.Tensor | None, k_bias: torch.Tensor | None, v_bias: torch.Tensor | None, scale: float,
               causal: bool, packed_kv: bool = False) -> torch.Tensor:
    """The op through its decomposition (``core.composite.attention``), on any device."""
    # the op's inputs in order, the optional ones where given (pos with its biases, k_bias with v_bias)
    inputs = [t for t in (q, k, v, key_lengths, key_ends, rows, slots, pos, pos_bias_u, pos_bias_v, q_bias, k_bias,
                          v_bias) if t is not None]
    packed = {"has_rows": True, "has_slots": slots is not None, "packed_kv": packed_kv} if rows is not None else {}
    return run_decomposition("attention", inputs, {"scale": scale, "causal": causal,
                                                   "has_lengths": key_lengths is not None,
                                                   "has_key_ends": key_ends is not None, "has_pos": pos is not None,
                                                   "has_q_bias": q_bias is not None, "has_kv_bias": k_bias is not None,
                                                   **packed})


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None,
               key_ends: torch.Tensor | None, rows: torch.Tensor | None, slots: torch.Tensor | None,
               pos: torch.Tensor | None, pos_bias_u: torch.Tensor | None, pos_bias_v: torch.Tensor | None,
               q_bias: torch.Tensor | None, k_bias: torch.Tensor | None, v_bias: torch.Tensor | None, scale: float,
               causal: bool, packed_kv: bool = False) -> torch.Tensor:
    launch = _launch if kernel_available(q.device) else decomposed
    return launch(q, k, v, key_lengths, key_ends, rows, slots, pos, pos_bias_u, pos_bias_v, q_bias, k_bias, v_bias,
                  scale, causal, packed_kv)


def _fake(q, k, v, key_lengths, key_ends, rows, slots, pos, pos_bias_u, pos_bias_v, q_bias, k_bias, v_bias, scale,
          causal, packed_kv=False):
    out_rows = (1, slots.shape[0]) if slots is not None else rows.shape if rows is not None else (q.shape[0], q.shape[2])
    return q.new_empty((*out_rows, q.shape[1], v.shape[3])).transpose(1, 2)


attention = register_op("attention", _attention, _fake)
