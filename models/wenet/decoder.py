"""The attention decoders (WeNet's TransformerDecoder / BiTransformerDecoder / DecoderLayer)."""

from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module, ModuleList
from core.tensor import Tensor
from layers.attention import MultiHeadedAttention, MultiHeadedCrossAttention, Packing
from layers.embedding import Embedding, PositionalEncoding
from layers.feed_forward import PositionwiseFeedForward
from layers.linear import Linear, fp32_accurate_token_log_probs, fp32_accurate_top_k_log_probs
from layers.normalization import LayerNorm
from models.wenet.config import DecoderConfig

KV = tuple[Tensor, Tensor]


class DecoderLayer(Module):
    def __init__(self, d: int, config: DecoderConfig, dtype: DataType):
        super().__init__()
        self.dtype = dtype
        self.self_attn = MultiHeadedAttention(config.attention_heads, d, dtype)
        self.src_attn = MultiHeadedCrossAttention(config.attention_heads, d, dtype)
        self.feed_forward = PositionwiseFeedForward(d, config.linear_units, config.activation_type, dtype)
        self.norm1 = LayerNorm(d, config.norm_eps)
        self.norm2 = LayerNorm(d, config.norm_eps)
        self.norm3 = LayerNorm(d, config.norm_eps)

    def forward(self, x: Tensor, memory: KV, memory_lengths: Tensor, key_ends: Tensor | None = None,
                cache: KV | None = None, packing: Packing | None = None,
                memory_biased: bool = True) -> tuple[Tensor, KV | None]:
        """Self-attention of tries' nodes over their ancestors (``key_ends``; packed rows with ``packing``), or of
        the next token over all ``cache``d ones. x is the residual stream in fp32, as the encoder's: each sublayer
        runs in the layer's dtype and its output is added in fp32. ``memory_biased``: whether the memory K/V hold
        their projections' biases (``WeNetModel.cross_kv``)."""
        h, f32 = self.dtype, DataType.float32
        a, new_cache = self.self_attn(self.norm1(x, h), None, cache=cache, key_ends=key_ends, packing=packing)
        x = x + F.cast(a, f32)
        x = x + F.cast(self.src_attn(self.norm2(x, h), memory[0], memory[1], memory_lengths, packing,
                                     memory_biased), f32)
        x = x + F.cast(self.feed_forward(self.norm3(x, h)), f32)
        return x, new_cache


class TransformerDecoder(Module):
    """``embed.0`` token embedding, ``embed.1`` absolute positions. Teacher-forced (``forward``) over a trie of
    hypotheses (``runtime.trie``) it returns only the log-probabilities of the trie's tokens, all that attention
    rescoring needs; a ``step`` returns the best next tokens, all that beam search needs."""

    def __init__(self, vocab_size: int, d: int, config: DecoderConfig, num_blocks: int, max_len: int,
                 dtype: DataType):
        super().__init__()
        self.dtype = dtype
        # the position table and the sum in fp32: the residual stream starts unrounded
        self.embed = ModuleList([Embedding(vocab_size, d, dtype), PositionalEncoding(d, max_len, dtype=DataType.float32)])
        self.decoders = ModuleList([DecoderLayer(d, config, dtype) for _ in range(num_blocks)])
        self.after_norm = LayerNorm(d, config.norm_eps)
        self.output_layer = Linear(d, vocab_size, dtype=DataType.float32)  # fp32-accurate logits, as CTC's

    def embedded(self, tokens: Tensor, offset: int | Tensor = 0, positions: Tensor | None = None) -> Tensor:
        """Token embedding plus absolute positions: the residual stream's start, in fp32."""
        return self.embed[1](F.cast(self.embed[0](tokens), DataType.float32), offset, positions=positions)[0]

    def normed(self, x: Tensor) -> Tensor:
        """The last layer's output (fp32) through ``after_norm``: what the output layer reads."""
        return self.after_norm(x)

    def top_k_log_probs(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best next-token log-probs per row of x and their labels (the vocabulary's log-probs never
        written: ``fp32_accurate_top_k_log_probs``)."""
        return fp32_accurate_top_k_log_probs(self.normed(x), self.output_layer, k, self.dtype)

    def forward(self, tokens: Tensor, positions: Tensor, ends: Tensor, parents: Tensor, memory: list[KV],
                memory_lengths: Tensor, packing: Packing) -> Tensor:
        """The nodes of B tries (one per utterance) packed in pre-order, (1, P) int32 each: tokens, depths and
        parents (packed rows), and the tries' subtree ends (B, M) in each trie's own numbering -> log p(token of
        node i | its ancestors' tokens) (1, P) fp32, read from its parent's output (the vocabulary logits never
        written: ``F.token_log_probs``). A node's output depends only on its ancestors, as a token's on its prefix
        in a causal decoder, so a hypothesis' log-probs are those of its path's nodes. ``memory``: each layer's
        cross K/V without their biases (``WeNetModel.cross_kv(..., bias=False)``)."""
        x = self.embedded(tokens, positions=positions)
        for layer, kv in zip(self.decoders, memory):
            x, _ = layer(x, kv, memory_lengths, key_ends=ends, packing=packing, memory_biased=False)
        return fp32_accurate_token_log_probs(self.normed(F.gather_rows(x, parents)), self.output_layer, tokens,
                                             self.dtype)

    def step(self, tokens: Tensor, cache: list[KV], memory: list[KV], memory_lengths: Tensor,
             k: int) -> tuple[tuple[Tensor, Tensor], list[KV]]:
        """One token per hypothesis (B*N, 1) after ``S`` cached ones -> the ``k`` best next tokens' (log-probs,
        labels) (B*N, k), best first (all that beam search reads), caches with S+1."""
        offset = F.shape(cache[0][0], 2)
        x = self.embedded(tokens, offset)
        new_cache = []
        for layer, kv, layer_cache in zip(self.decoders, memory, cache):
            x, c = layer(x, kv, memory_lengths, cache=layer_cache)
            new_cache.append(c)
        return self.top_k_log_probs(F.squeeze(x, 1), k), new_cache


class BiTransformerDecoder(Module):
    def __init__(self, vocab_size: int, d: int, config: DecoderConfig, max_len: int, dtype: DataType):
        super().__init__()
        self.left_decoder = TransformerDecoder(vocab_size, d, config, config.num_blocks, max_len, dtype)
        self.right_decoder = TransformerDecoder(vocab_size, d, config, config.r_num_blocks, max_len, dtype)
