"""The attention decoders (WeNet's TransformerDecoder / BiTransformerDecoder / DecoderLayer)."""

from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module, ModuleList
from core.tensor import Tensor
from layers.attention import MultiHeadedAttention, MultiHeadedCrossAttention
from layers.embedding import Embedding, PositionalEncoding
from layers.feed_forward import PositionwiseFeedForward
from layers.linear import Linear, fp32_accurate_linear, fp32_accurate_token_log_probs
from layers.normalization import LayerNorm
from models.wenet.config import DecoderConfig

KV = tuple[Tensor, Tensor]


class DecoderLayer(Module):
    def __init__(self, d: int, config: DecoderConfig, dtype: DataType):
        super().__init__()
        self.self_attn = MultiHeadedAttention(config.attention_heads, d, dtype)
        self.src_attn = MultiHeadedCrossAttention(config.attention_heads, d, dtype)
        self.feed_forward = PositionwiseFeedForward(d, config.linear_units, config.activation_type, dtype)
        self.norm1 = LayerNorm(d, config.norm_eps)
        self.norm2 = LayerNorm(d, config.norm_eps)
        self.norm3 = LayerNorm(d, config.norm_eps)

    def forward(self, x: Tensor, lengths: Tensor | None, memory: KV, memory_lengths: Tensor,
                cache: KV | None = None) -> tuple[Tensor, KV | None]:
        """Causal self-attention over the first ``lengths`` tokens (all cached ones if ``cache``)."""
        a, new_cache = self.self_attn(self.norm1(x), lengths, causal=cache is None, cache=cache)
        x = x + a
        x = x + self.src_attn(self.norm2(x), memory[0], memory[1], memory_lengths)
        x = x + self.feed_forward(self.norm3(x))
        return x, new_cache


class TransformerDecoder(Module):
    """``embed.0`` token embedding, ``embed.1`` absolute positions. Teacher-forced (``forward``) it returns only the
    log-probabilities of the given next tokens, all that attention rescoring needs; a ``step`` returns logits."""

    def __init__(self, vocab_size: int, d: int, config: DecoderConfig, num_blocks: int, max_len: int,
                 dtype: DataType):
        super().__init__()
        self.embed = ModuleList([Embedding(vocab_size, d, dtype), PositionalEncoding(d, max_len, dtype=dtype)])
        self.decoders = ModuleList([DecoderLayer(d, config, dtype) for _ in range(num_blocks)])
        self.after_norm = LayerNorm(d, config.norm_eps)
        self.output_layer = Linear(d, vocab_size, dtype=DataType.float32)  # fp32-accurate logits, as CTC's

    def normed(self, x: Tensor) -> Tensor:
        """The last layer's output through ``after_norm``, in fp32: what the output layer reads."""
        return self.after_norm(F.cast(x, DataType.float32))

    def logits(self, x: Tensor) -> Tensor:
        return fp32_accurate_linear(self.normed(x), self.output_layer, x.dtype)

    def forward(self, tokens: Tensor, targets: Tensor, lengths: Tensor, memory: list[KV],
                memory_lengths: Tensor) -> Tensor:
        """tokens and targets (B*N, L) int32, of which the first ``lengths`` (B*N,) count -> log p(targets[:, t] |
        tokens[:, :t+1]) (B*N, L) fp32, the vocabulary logits never written (``F.token_log_probs``)."""
        x, _ = self.embed[1](self.embed[0](tokens))
        for layer, kv in zip(self.decoders, memory):
            x, _ = layer(x, lengths, kv, memory_lengths)
        return fp32_accurate_token_log_probs(self.normed(x), self.output_layer, targets, x.dtype)

    def step(self, tokens: Tensor, cache: list[KV], memory: list[KV],
             memory_lengths: Tensor) -> tuple[Tensor, list[KV]]:
        """One token per hypothesis (B*N, 1) after ``S`` cached ones -> logits (B*N, V), caches with S+1."""
        offset = F.shape(cache[0][0], 2)
        x, _ = self.embed[1](self.embed[0](tokens), offset)
        new_cache = []
        for layer, kv, layer_cache in zip(self.decoders, memory, cache):
            x, c = layer(x, None, kv, memory_lengths, layer_cache)
            new_cache.append(c)
        return F.squeeze(self.logits(x), 1), new_cache


class BiTransformerDecoder(Module):
    def __init__(self, vocab_size: int, d: int, config: DecoderConfig, max_len: int, dtype: DataType):
        super().__init__()
        self.left_decoder = TransformerDecoder(vocab_size, d, config, config.num_blocks, max_len, dtype)
        self.right_decoder = TransformerDecoder(vocab_size, d, config, config.r_num_blocks, max_len, dtype)
