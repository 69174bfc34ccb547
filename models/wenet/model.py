"""The whole WeNet model (encoder, decoder, CTC) as our modules, named as WeNet's checkpoint keys."""

from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module
from core.tensor import Tensor
from layers.linear import Linear, fp32_accurate_top_k_log_probs, fused_linear
from layers.subsampling import subsampled_length
from models.wenet.config import ModelConfig
from models.wenet.decoder import KV, BiTransformerDecoder, TransformerDecoder
from models.wenet.encoder import ConformerEncoder


class CTC(Module):
    """The projection to the vocabulary is fp32-accurate whatever the model's dtype (``fp32_accurate_operands``):
    fp16 would round a logit near 16 to 1/64, enough to swap near-tied tokens against an fp32 reference.
    ``dtype``: the tensor cores it runs on (the model's dtype; its input is fp32 whatever that is)."""

    def __init__(self, vocab_size: int, d: int, dtype: DataType = DataType.float32):
        super().__init__()
        self.dtype = dtype
        self.ctc_lo = Linear(d, vocab_size, dtype=DataType.float32)

    def top_k_log_probs(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Each frame's ``k`` best fp32 log-probs (B, T, k), largest first, and their int32 labels: all that the CTC
        searches read (greedy the first, prefix beam search ``beam``), so the (B, T, V) log-probs are never written."""
        return fp32_accurate_top_k_log_probs(x, self.ctc_lo, k, self.dtype)


class WeNetModel(Module):
    """``max_frames`` (input fbank frames) sizes the position tables the networks can address;
    ``decoder_dtype`` (default: ``dtype``) is the attention decoders' and their cross K/V's."""

    def __init__(self, config: ModelConfig, dtype: DataType = DataType.float32, max_frames: int = 20000,
                 decoder_dtype: DataType | None = None):
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.decoder_dtype = decoder_dtype or dtype
        d = config.d_model
        self.max_encoder_frames = max(subsampled_length(max_frames, config.encoder.input_layer), 1)
        self.encoder = ConformerEncoder(config.encoder, config.input_dim, self.max_encoder_frames, dtype)
        # A hypothesis has at most one token per encoder frame, plus sos/eos.
        max_tokens = self.max_encoder_frames + 2
        if config.decoder.kind == "bitransformer":
            self.decoder = BiTransformerDecoder(config.vocab_size, d, config.decoder, max_tokens, self.decoder_dtype)
        else:
            self.decoder = TransformerDecoder(config.vocab_size, d, config.decoder, config.decoder.num_blocks,
                                              max_tokens, self.decoder_dtype)
        self.ctc = CTC(config.vocab_size, d, dtype)
        self.assign_names()

    def decoders(self) -> dict[str, TransformerDecoder]:
        """The attention decoders by direction: {"left": ...} or {"left": ..., "right": ...}."""
        if isinstance(self.decoder, BiTransformerDecoder):
            return {"left": self.decoder.left_decoder, "right": self.decoder.right_decoder}
        return {"left": self.decoder}

    def cross_kv(self, encoder_out: Tensor, directions: tuple[str, ...] | None = None,
                 bias: bool = True) -> dict[str, list[KV]]:
        """Per decoder direction (all, or ``directions``) and layer, the cross-attention K/V (B, H, T, d_k) of the
        encoder output, from one GEMM over all of them. Without ``bias`` they are views of the GEMM's output, and the
        attention adds the projections' biases as it loads them (``MultiHeadedCrossAttention``'s ``biased=False``)."""
        memory = F.cast(encoder_out, self.decoder_dtype)
        attns = {name: [layer.src_attn for layer in d.decoders] for name, d in self.decoders().items()
                 if directions is None or name in directions}
        kv = iter(fused_linear(memory, [lin for layers in attns.values() for a in layers
                                        for lin in (a.linear_k, a.linear_v)], bias))
        return {name: [(a.heads(next(kv)), a.heads(next(kv))) for a in layers] for name, layers in attns.items()}
