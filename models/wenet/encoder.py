"""The conformer encoder (WeNet's ConformerEncoder / ConformerEncoderLayer / GlobalCMVN)."""

from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module, ModuleList, Parameter
from core.tensor import Tensor
from layers.attention import MultiHeadedAttention, RelPositionMultiHeadedAttention
from layers.convolution_module import ConvolutionModule
from layers.embedding import PositionalEncoding
from layers.feed_forward import PositionwiseFeedForward
from layers.normalization import LayerNorm
from layers.subsampling import Conv2dSubsampling
from models.wenet.config import EncoderConfig


class GlobalCMVN(Module):
    """``(x - mean) * istd`` in fp32; the values come from the checkpoint's buffers."""

    def __init__(self, dim: int):
        super().__init__()
        self.mean = Parameter((dim,), DataType.float32)
        self.istd = Parameter((dim,), DataType.float32)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.value) * self.istd.value


class ConformerEncoderLayer(Module):
    def __init__(self, config: EncoderConfig, dtype: DataType):
        super().__init__()
        self.dtype = dtype
        d, eps = config.output_size, config.norm_eps
        attention = RelPositionMultiHeadedAttention if config.selfattention_layer_type == "rel_selfattn" \
            else MultiHeadedAttention
        self.self_attn = attention(config.attention_heads, d, dtype)
        self.feed_forward = PositionwiseFeedForward(d, config.linear_units, config.activation_type, dtype)
        self.feed_forward_macaron = PositionwiseFeedForward(d, config.linear_units, config.activation_type, dtype) \
            if config.macaron_style else None
        self.conv_module = ConvolutionModule(d, config.cnn_module_kernel, config.activation_type, config.cnn_module_norm,
                                             config.causal, config.conv_norm_eps, dtype) \
            if config.use_cnn_module else None
        self.norm_ff = LayerNorm(d, eps)
        self.norm_mha = LayerNorm(d, eps)
        if config.macaron_style:
            self.norm_ff_macaron = LayerNorm(d, eps)
        if config.use_cnn_module:
            self.norm_conv = LayerNorm(d, eps)
            self.norm_final = LayerNorm(d, eps)
        self.ff_scale = 0.5 if config.macaron_style else 1.0

    def forward(self, x: Tensor, lengths: Tensor, pos_emb: Tensor, valid: Tensor) -> Tensor:
        """x: the residual stream (B, T', D) in fp32. Each sublayer runs in the layer's dtype and its output
        is added in fp32, so a half-precision build rounds each sublayer's output once instead of
        rounding the running sum at every add (closer to the fp32 reference)."""
        h, f32 = self.dtype, DataType.float32
        if self.feed_forward_macaron is not None:
            x = self._feed_forward(x, self.feed_forward_macaron, self.norm_ff_macaron)
        if isinstance(self.self_attn, RelPositionMultiHeadedAttention):
            x = x + F.cast(self.self_attn(self.norm_mha(x, h), lengths, pos_emb), f32)
        else:
            x = x + F.cast(self.self_attn(self.norm_mha(x, h), lengths)[0], f32)
        if self.conv_module is not None:
            x = x + F.cast(self.conv_module(self.norm_conv(x, h), valid), f32)
        x = self._feed_forward(x, self.feed_forward, self.norm_ff)
        return self.norm_final(x) if self.conv_module is not None else x

    def _feed_forward(self, x: Tensor, feed_forward: PositionwiseFeedForward, norm: LayerNorm) -> Tensor:
        return x + self.ff_scale * F.cast(feed_forward(norm(x, self.dtype)), DataType.float32)


class ConformerEncoder(Module):
    def __init__(self, config: EncoderConfig, input_dim: int, max_frames: int, dtype: DataType):
        super().__init__()
        self.dtype = dtype
        self.config = config
        d = config.output_size
        pos_enc = PositionalEncoding(d, max_frames, add=config.pos_enc_layer_type != "rel_pos", dtype=dtype)
        self.global_cmvn = GlobalCMVN(input_dim)
        self.embed = Conv2dSubsampling(config.input_layer, input_dim, d, pos_enc, dtype)
        self.encoders = ModuleList([ConformerEncoderLayer(config, dtype) for _ in range(config.num_blocks)])
        self.after_norm = LayerNorm(d, config.norm_eps) if config.final_norm else None

    def forward(self, speech: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """speech (B, T, idim) fp32 fbank, lengths (B,) int32 -> (B, T', D) fp32, (B,) int32.

        The output stays fp32 whatever the model's dtype, so that the fp32-accurate CTC projection gets it without
        one more rounding (it trims the fp16 log-probs' error by ~4 %); the cross K/V network casts it."""
        x = F.cast(self.global_cmvn(speech), self.dtype)
        x, lengths, pos_emb = self.embed(x, lengths)
        valid = F.make_valid_mask(lengths, F.shape(x, 1))  # (B, T')
        x = F.cast(x, DataType.float32)  # the residual stream
        for layer in self.encoders:
            x = layer(x, lengths, pos_emb, valid)
        return (self.after_norm(x) if self.after_norm is not None else x), lengths
