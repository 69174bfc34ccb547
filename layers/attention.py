"""WeNet's attention: plain, relative-position (no rel_shift), and cross-attention over precomputed K/V.

The projections are layers here; the attention itself is one fused op (``F.attention``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from core import functional as F
from core.dtype import DataType
from core.module import Module, Parameter
from core.tensor import Tensor
from layers.linear import Linear, fused_linear, linear


class Packing(NamedTuple):
    """Rows of B sequences packed back to back without padding (TensorRT-LLM's remove_input_padding): activations
    are (1, P, D), and only attention sees the sequences, in a (B, M) layout. ``rows`` (B, M) int32: the packed row of
    position m of sequence b, -1 past its length; ``slots`` (P,) int32: the (B, M) position of each packed row,
    b * M + m, with which the attention op's decomposition packs its output."""

    rows: Tensor
    slots: Tensor

    @classmethod
    def of(cls, starts: Tensor, lengths: Tensor, sequences: Tensor, width: Tensor) -> Packing:
        """From each sequence's first row and length, ``starts`` (B,) and ``lengths`` (B, 1) int32, each packed row's
        sequence ``sequences`` (P,) int32, and the layout's M, ``width`` (a shape)."""
        batch, positions = F.shape(starts, 0), F.arange(width)
        rows = F.where(positions < lengths, F.unsqueeze(starts, 1) + positions, -1)
        slot_of = F.flat_indices(batch, width)  # (B, M): b * M + m
        row_starts = F.view(F.slice(slot_of, 1, 0, 1), [-1])
        slots = F.gather(row_starts, sequences, 0) + F.arange(F.shape(sequences, 0)) - F.gather(starts, sequences, 0)
        # rows past the last sequence (a compiled engine pads P up to its bucket) must still index the output
        last = F.slice(F.view(slot_of, [-1]), 0, batch * width - 1, 1)
        return cls(rows, F.where(slots > last, 0, slots))


class MultiHeadedAttention(Module):
    """Self-attention with an optional KV cache; keys are masked by length (and causally)."""

    def __init__(self, n_head: int, n_feat: int, dtype: DataType):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = Linear(n_feat, n_feat, dtype=dtype)
        self.linear_k = Linear(n_feat, n_feat, dtype=dtype)
        self.linear_v = Linear(n_feat, n_feat, dtype=dtype)
        self.linear_out = Linear(n_feat, n_feat, dtype=dtype)

    def heads(self, x: Tensor, batch: Tensor | int | None = None) -> Tensor:
        """(B, T, H*d_k) -> (B, H, T, d_k); ``batch`` regroups rows, e.g. (B*N, L) -> (B, N*L)."""
        batch = F.shape(x, 0) if batch is None else batch
        return F.view(x, [batch, -1, self.h, self.d_k]).transpose(1, 2)

    def merge_heads(self, x: Tensor, like: Tensor) -> Tensor:
        """(B, H, T, d_k) -> the (batch, time) layout of ``like``, features H*d_k."""
        x = x.transpose(1, 2)
        return F.view(x, [F.shape(like, 0), F.shape(like, 1), self.h * self.d_k])

    def biases(self) -> tuple[Tensor | None, tuple[Tensor, Tensor] | None]:
        """(q bias, (k bias, v bias)) as (H, d_k), for the attention op to add to the heads it loads (None where
        the projections have none)."""
        q, k, v = (F.view(lin.bias.value, [self.h, self.d_k]) if lin.bias is not None else None
                   for lin in (self.linear_q, self.linear_k, self.linear_v))
        return q, ((k, v) if k is not None else None)

    def qkv(self, x: Tensor, bias: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K and V of ``x`` in heads layout from one GEMM. Without ``bias`` they are views of the GEMM's output,
        never copied into the heads layout, and the attention op adds their biases (``biases``) as it loads them."""
        q, k, v = fused_linear(x, [self.linear_q, self.linear_k, self.linear_v], bias)
        return self.heads(q), self.heads(k), self.heads(v)

    def forward(self, x: Tensor, key_lengths: Tensor | None, causal: bool = False,
                cache: tuple[Tensor, Tensor] | None = None, key_ends: Tensor | None = None,
                packing: Packing | None = None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Self-attention of ``x`` over keys ``j < key_lengths[b]`` (all if None; also ``j <= i`` if
        ``causal``; only its ancestors if ``x`` is a tree's nodes in pre-order with subtree ends ``key_ends``);
        with ``cache`` the new keys/values are appended to it and returned; with ``packing`` x is packed rows."""
        scale = 1 / math.sqrt(self.d_k)
        if cache is None:
            q_bias, kv_bias = self.biases()
            rows = {"rows": packing.rows, "slots": packing.slots, "packed_kv": True} if packing is not None else {}
            out = F.attention(*self.qkv(x, bias=False), key_lengths, scale=scale, causal=causal, key_ends=key_ends,
                              q_bias=q_bias, kv_bias=kv_bias, **rows)
            return self.linear_out(self.merge_heads(out, x)), None
        q, k, v = self.qkv(x)  # the cache holds finished keys and values
        k, v = F.concat([cache[0], k], 2), F.concat([cache[1], v], 2)
        out = F.attention(q, k, v, key_lengths, scale=scale, causal=causal)
        return self.linear_out(self.merge_heads(out, x)), (k, v)


class MultiHeadedCrossAttention(MultiHeadedAttention):
    """Attention over memory K/V computed once per utterance and shared by its queries: (B, L, D), a trie of
    its hypotheses' tokens, or (B*N, L, D), its N hypotheses, regrouped to (B, H, N*L, d_k). The memory is never
    repeated per hypothesis.
    """

    def forward(self, x: Tensor, key: Tensor, value: Tensor, memory_lengths: Tensor,
                packing: Packing | None = None, biased: bool = True) -> Tensor:
        """``packing``: x is packed rows (1, P, D), each sequence of them one utterance's queries. ``biased=False``:
        key and value lack their projections' biases, which the attention adds as it loads them; then they can be
        views of the one GEMM that projects every layer's (a bias added outside would write each of them out)."""
        q = linear(x, self.linear_q.weight.value)
        q = self.heads(q) if packing is not None else self.heads(q, batch=F.shape(key, 0))
        rows = {"rows": packing.rows, "slots": packing.slots} if packing is not None else {}
        q_bias, kv_bias = self.biases()
        out = F.attention(q, key, value, memory_lengths, scale=1 / math.sqrt(self.d_k), q_bias=q_bias,
                          kv_bias=None if biased else kv_bias, **rows)
        return self.linear_out(self.merge_heads(out, x))


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    """WeNet's relative-position attention: ((q+u)·kᵀ + (q+v)·(W_pos pe)ᵀ) / sqrt(d_k), no rel_shift.
    ``pos_emb`` is the whole position table (1, max_len, D); key j uses its row j."""

    def __init__(self, n_head: int, n_feat: int, dtype: DataType):
        super().__init__(n_head, n_feat, dtype)
        self.linear_pos = Linear(n_feat, n_feat, bias=False, dtype=dtype)
        self.pos_bias_u = Parameter((n_head, n_feat // n_head), dtype)
        self.pos_bias_v = Parameter((n_head, n_feat // n_head), dtype)

    def forward(self, x: Tensor, key_lengths: Tensor, pos_emb: Tensor) -> Tensor:
        q, k, v = self.qkv(x, bias=False)
        q_bias, kv_bias = self.biases()
        # the table's projection is a build-time constant; its first T rows are the keys' (1, H, T, d_k)
        p = self.heads(F.slice(self.linear_pos(pos_emb), 1, 0, F.shape(x, 1)))
        out = F.attention(q, k, v, key_lengths, scale=1 / math.sqrt(self.d_k), pos=p,
                          pos_bias_u=self.pos_bias_u.value, pos_bias_v=self.pos_bias_v.value, q_bias=q_bias,
                          kv_bias=kv_bias)
        return self.linear_out(self.merge_heads(out, x))
