"""A plain PyTorch WeNet, module for module and key for key as WeNet's own, and its decoding.

This is the oracle of the tests and the baseline of benchmarks: it reproduces WeNet's inference
numerics (including the batched padding leak of the non-causal conv module) and WeNet's
per-utterance search algorithms. It shares no layer code with the engines on purpose.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from layers.embedding import sinusoid_table
from models.wenet.config import DecoderConfig, EncoderConfig, ModelConfig
from runtime.search import DecodeResult
from weights.mapping import KNOWN_UNUSED

IGNORE_ID = -1


def make_pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


def subsequent_mask(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tril(torch.ones(size, size, dtype=torch.bool, device=device))


class GlobalCMVN(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("istd", torch.ones(dim))

    def forward(self, x):
        return (x - self.mean) * self.istd


class PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, max_len: int = 5000, rel: bool = False):
        super().__init__()
        self.xscale = math.sqrt(d_model)
        self.rel = rel
        self.pe = sinusoid_table(max_len, d_model).unsqueeze(0)  # not a buffer: never in the state dict

    def forward(self, x, offset: int = 0):
        pos_emb = self.pe[:, offset:offset + x.size(1)].to(x.device, x.dtype)
        x = x * self.xscale
        return (x, pos_emb) if self.rel else (x + pos_emb, pos_emb)


class Conv2dSubsampling(nn.Module):
    """WeNet's Conv2dSubsampling4/6/8 with the post-2022-12 mask slicing."""

    LAYOUT = {"conv2d": ([(3, 2), (3, 2)], "out"), "conv2d6": ([(3, 2), (5, 3)], "linear"),
              "conv2d8": ([(3, 2), (3, 2), (3, 2)], "linear")}

    def __init__(self, input_layer: str, idim: int, odim: int, pos_enc: nn.Module):
        super().__init__()
        self.layers, key = self.LAYOUT[input_layer]
        modules, channels, freq = [], 1, idim
        for kernel, stride in self.layers:
            modules += [nn.Conv2d(channels, odim, kernel, stride), nn.ReLU()]
            channels, freq = odim, (freq - kernel) // stride + 1
        self.conv = nn.Sequential(*modules)
        if key == "out":
            self.out = nn.Sequential(nn.Linear(odim * freq, odim))
        else:
            self.linear = nn.Linear(odim * freq, odim)
        self.pos_enc = pos_enc

    def forward(self, x, x_mask):
        x = self.conv(x.unsqueeze(1))
        b, c, t, f = x.size()
        x = x.transpose(1, 2).contiguous().view(b, t, c * f)
        x = self.out(x) if hasattr(self, "out") else self.linear(x)
        x, pos_emb = self.pos_enc(x)
        for kernel, stride in self.layers:  # [2::2] for (3, 2), [4::3] for (5, 3)
            x_mask = x_mask[:, :, kernel - 1::stride]
        return x, pos_emb, x_mask


class MultiHeadedAttention(nn.Module):
    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        self.d_k, self.h = n_feat // n_head, n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)

    def forward_qkv(self, query, key, value):
        b = query.size(0)
        q = self.linear_q(query).view(b, -1, self.h, self.d_k).transpose(1, 2)
        k = self.linear_k(key).view(b, -1, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(value).view(b, -1, self.h, self.d_k).transpose(1, 2)
        return q, k, v

    def forward_attention(self, value, scores, mask):
        b = value.size(0)
        if mask.size(2) > 0:
            mask = mask.unsqueeze(1).eq(0)[:, :, :, :scores.size(-1)]
            scores = scores.masked_fill(mask, -float("inf"))
            attn = torch.softmax(scores.float(), dim=-1).type_as(value).masked_fill(mask, 0.0)
        else:
            attn = torch.softmax(scores.float(), dim=-1).type_as(value)
        x = torch.matmul(attn, value).transpose(1, 2).contiguous().view(b, -1, self.h * self.d_k)
        return self.linear_out(x)

    def forward(self, query, key, value, mask, pos_emb=None):
        q, k, v = self.forward_qkv(query, key, value)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self.forward_attention(v, scores, mask)


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    def __init__(self, n_head: int, n_feat: int):
        super().__init__(n_head, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))

    def forward(self, query, key, value, mask, pos_emb=None):
        q, k, v = self.forward_qkv(query, key, value)
        q = q.transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)
        q_with_bias_u = (q + self.pos_bias_u).transpose(1, 2)
        q_with_bias_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = torch.matmul(q_with_bias_u, k.transpose(-2, -1))
        matrix_bd = torch.matmul(q_with_bias_v, p.transpose(-2, -1))  # no rel_shift, as WeNet
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        return self.forward_attention(v, scores, mask)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden: int, activation: nn.Module):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden)
        self.activation = activation
        self.dropout = nn.Dropout(0.0)  # training only (set by the trainer); identity in eval
        self.w_2 = nn.Linear(hidden, idim)

    def forward(self, x):
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class ConvolutionModule(nn.Module):
    def __init__(self, channels: int, kernel_size: int, activation: nn.Module, norm: str, causal: bool, eps: float):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.lorder = kernel_size - 1 if causal else 0
        padding = 0 if causal else (kernel_size - 1) // 2
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=padding, groups=channels)
        self.use_layer_norm = norm == "layer_norm"
        self.norm = nn.LayerNorm(channels, eps=eps) if self.use_layer_norm else nn.BatchNorm1d(channels, eps=eps)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)
        self.activation = activation

    def forward(self, x, mask_pad):
        x = x.transpose(1, 2)
        if mask_pad.size(2) > 0:
            x = x.masked_fill(~mask_pad, 0.0)
        if self.lorder > 0:
            x = nn.functional.pad(x, (self.lorder, 0), "constant", 0.0)
        x = nn.functional.glu(self.pointwise_conv1(x), dim=1)
        x = self.depthwise_conv(x)
        if self.use_layer_norm:
            x = x.transpose(1, 2)
        x = self.activation(self.norm(x))
        if self.use_layer_norm:
            x = x.transpose(1, 2)
        x = self.pointwise_conv2(x)
        if mask_pad.size(2) > 0:
            x = x.masked_fill(~mask_pad, 0.0)
        return x.transpose(1, 2)


def _activation(name: str) -> nn.Module:
    return {"swish": nn.SiLU(), "relu": nn.ReLU()}[name]


class ConformerEncoderLayer(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        d = c.output_size
        attn = RelPositionMultiHeadedAttention if c.selfattention_layer_type == "rel_selfattn" else MultiHeadedAttention
        self.self_attn = attn(c.attention_heads, d)
        self.feed_forward = PositionwiseFeedForward(d, c.linear_units, _activation(c.activation_type))
        self.feed_forward_macaron = PositionwiseFeedForward(d, c.linear_units, _activation(c.activation_type)) \
            if c.macaron_style else None
        self.conv_module = ConvolutionModule(d, c.cnn_module_kernel, _activation(c.activation_type), c.cnn_module_norm,
                                             c.causal, c.conv_norm_eps) if c.use_cnn_module else None
        self.norm_ff = nn.LayerNorm(d, eps=c.norm_eps)
        self.norm_mha = nn.LayerNorm(d, eps=c.norm_eps)
        if c.macaron_style:
            self.norm_ff_macaron = nn.LayerNorm(d, eps=c.norm_eps)
        if c.use_cnn_module:
            self.norm_conv = nn.LayerNorm(d, eps=c.norm_eps)
            self.norm_final = nn.LayerNorm(d, eps=c.norm_eps)
        self.ff_scale = 0.5 if c.macaron_style else 1.0
        self.dropout = nn.Dropout(0.0)  # training only; identity in eval

    def forward(self, x, mask, pos_emb, mask_pad):
        if self.feed_forward_macaron is not None:
            x = x + self.ff_scale * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        y = self.norm_mha(x)
        x = x + self.dropout(self.self_attn(y, y, y, mask, pos_emb))
        if self.conv_module is not None:
            x = x + self.dropout(self.conv_module(self.norm_conv(x), mask_pad))
        x = x + self.ff_scale * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.norm_final(x) if self.conv_module is not None else x


class ConformerEncoder(nn.Module):
    def __init__(self, c: EncoderConfig, input_dim: int):
        super().__init__()
        self.global_cmvn = GlobalCMVN(input_dim)
        pos_enc = PositionalEncoding(c.output_size, rel=c.pos_enc_layer_type == "rel_pos")
        self.embed = Conv2dSubsampling(c.input_layer, input_dim, c.output_size, pos_enc)
        self.encoders = nn.ModuleList([ConformerEncoderLayer(c) for _ in range(c.num_blocks)])
        self.after_norm = nn.LayerNorm(c.output_size, eps=c.norm_eps) if c.final_norm else None

    def forward(self, xs, xs_lens, chunk_size: int = 0):
        """``chunk_size`` > 0 (dynamic-chunk training) limits attention to the own and earlier chunks."""
        masks = ~make_pad_mask(xs_lens, xs.size(1)).unsqueeze(1)
        xs = self.global_cmvn(xs)
        xs, pos_emb, masks = self.embed(xs, masks)
        att_mask = masks
        if chunk_size > 0:
            chunk = torch.arange(xs.size(1), device=xs.device) // chunk_size
            att_mask = masks & (chunk.unsqueeze(0) <= chunk.unsqueeze(1)).unsqueeze(0)  # (B, T', T')
        for layer in self.encoders:
            xs = layer(xs, att_mask, pos_emb, masks)
        if self.after_norm is not None:
            xs = self.after_norm(xs)
        return xs, masks


class DecoderLayer(nn.Module):
    def __init__(self, d: int, c: DecoderConfig):
        super().__init__()
        self.self_attn = MultiHeadedAttention(c.attention_heads, d)
        self.src_attn = MultiHeadedAttention(c.attention_heads, d)
        self.feed_forward = PositionwiseFeedForward(d, c.linear_units, _activation(c.activation_type))
        self.norm1 = nn.LayerNorm(d, eps=c.norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=c.norm_eps)
        self.norm3 = nn.LayerNorm(d, eps=c.norm_eps)
        self.dropout = nn.Dropout(0.0)  # training only; identity in eval

    def forward(self, tgt, tgt_mask, memory, memory_mask, cache=None):
        residual = tgt
        tgt = self.norm1(tgt)
        if cache is None:
            tgt_q, tgt_q_mask = tgt, tgt_mask
        else:  # 2022 WeNet: recompute K/V of all positions, query the last one, cache layer outputs
            tgt_q, residual, tgt_q_mask = tgt[:, -1:, :], residual[:, -1:, :], tgt_mask[:, -1:, :]
        x = residual + self.dropout(self.self_attn(tgt_q, tgt, tgt, tgt_q_mask))
        y = self.norm2(x)
        x = x + self.dropout(self.src_attn(y, memory, memory, memory_mask))
        x = x + self.dropout(self.feed_forward(self.norm3(x)))
        if cache is not None:
            x = torch.cat([cache, x], dim=1)
        return x


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, d: int, c: DecoderConfig, num_blocks: int):
        super().__init__()
        self.embed = nn.Sequential(nn.Embedding(vocab_size, d), PositionalEncoding(d))
        self.decoders = nn.ModuleList([DecoderLayer(d, c) for _ in range(num_blocks)])
        self.after_norm = nn.LayerNorm(d, eps=c.norm_eps)
        self.output_layer = nn.Linear(d, vocab_size)

    def forward(self, memory, memory_mask, ys_in_pad, ys_in_lens):
        max_len = ys_in_pad.size(1)
        tgt_mask = ~make_pad_mask(ys_in_lens, max_len).unsqueeze(1) & \
            subsequent_mask(max_len, ys_in_pad.device).unsqueeze(0)
        x, _ = self.embed[1](self.embed[0](ys_in_pad))
        for layer in self.decoders:
            x = layer(x, tgt_mask, memory, memory_mask)
        return self.output_layer(self.after_norm(x))

    def forward_one_step(self, memory, memory_mask, tgt, tgt_mask, cache=None):
        x, _ = self.embed[1](self.embed[0](tgt))
        new_cache = []
        for i, layer in enumerate(self.decoders):
            x = layer(x, tgt_mask, memory, memory_mask, None if cache is None else cache[i])
            new_cache.append(x)
        y = self.output_layer(self.after_norm(x[:, -1]))
        return torch.log_softmax(y, dim=-1), new_cache


class BiTransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, d: int, c: DecoderConfig):
        super().__init__()
        self.left_decoder = TransformerDecoder(vocab_size, d, c, c.num_blocks)
        self.right_decoder = TransformerDecoder(vocab_size, d, c, c.r_num_blocks)


class CTC(nn.Module):
    def __init__(self, vocab_size: int, d: int):
        super().__init__()
        self.ctc_lo = nn.Linear(d, vocab_size)

    def log_softmax(self, x):
        return torch.log_softmax(self.ctc_lo(x), dim=2)


def log_add(*args: float) -> float:
    if all(a == -float("inf") for a in args):
        return -float("inf")
    a_max = max(args)
    return a_max + math.log(sum(math.exp(a - a_max) for a in args))


class ReferenceModel(nn.Module):
    """WeNet's ASRModel for inference: ``encoder``, ``decoder``, ``ctc`` and ``decode``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.encoder = ConformerEncoder(config.encoder, config.input_dim)
        if config.decoder.kind == "bitransformer":
            self.decoder = BiTransformerDecoder(config.vocab_size, d, config.decoder)
        else:
            self.decoder = TransformerDecoder(config.vocab_size, d, config.decoder, config.decoder.num_blocks)
        self.ctc = CTC(config.vocab_size, d)
        self.sos, self.eos, self.blank_id = config.sos, config.eos, config.blank_id

    def load_checkpoint(self, state: dict[str, torch.Tensor], cmvn: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Strict load: only WeNet's known-unused keys may be left over; CMVN from the file if absent."""
        state = {k: v for k, v in state.items() if not any(p.match(k) for p in KNOWN_UNUSED)}
        if "encoder.global_cmvn.mean" not in state and cmvn is not None:
            state["encoder.global_cmvn.mean"] = torch.from_numpy(cmvn[0]).float()
            state["encoder.global_cmvn.istd"] = torch.from_numpy(cmvn[1]).float()
        own = self.state_dict()
        for name in own:  # BatchNorm counters are unused in eval mode
            if name.endswith("num_batches_tracked"):
                state[name] = own[name]
        self.load_state_dict(state, strict=True)
        self.eval()

    def _left_right(self):
        if isinstance(self.decoder, BiTransformerDecoder):
            return self.decoder.left_decoder, self.decoder.right_decoder
        return self.decoder, None

    @torch.no_grad()
    def encode(self, speech: torch.Tensor, speech_lengths: torch.Tensor):
        """-> encoder_out (B,T',D), encoder_lens (B,), ctc log-probs (B,T',V), encoder_mask (B,1,T')."""
        encoder_out, mask = self.encoder(speech, speech_lengths)
        return encoder_out, mask.squeeze(1).sum(1), self.ctc.log_softmax(encoder_out), mask

    # -- WeNet's search algorithms, one utterance at a time ---------------------------------
    def ctc_greedy_search(self, ctc_probs: torch.Tensor, length: int) -> DecodeResult:
        best = ctc_probs[:length].argmax(-1).tolist()
        tokens, prev = [], None
        for t in best:
            if t != prev and t != self.blank_id:
                tokens.append(t)
            prev = t
        score = float(ctc_probs[:length].max(-1).values.sum())
        return DecodeResult(tokens, score, [tokens], [score])

    def ctc_prefix_beam_search(self, ctc_probs: torch.Tensor, length: int, beam_size: int) -> DecodeResult:
        cur = [((), (0.0, -float("inf")))]  # prefix -> (s: ends in blank, ns: ends in non-blank)
        for t in range(length):
            logp = ctc_probs[t]
            nxt: dict = defaultdict(lambda: (-float("inf"), -float("inf")))
            top_k_logp, top_k_index = logp.topk(beam_size)
            for u, p in zip(top_k_index.tolist(), top_k_logp.tolist()):
                for prefix, (s, ns) in cur:
                    last = prefix[-1] if prefix else None
                    if u == self.blank_id:
                        n_s, n_ns = nxt[prefix]
                        nxt[prefix] = (log_add(n_s, log_add(s, ns) + p), n_ns)
                    elif u == last:
                        n_s, n_ns = nxt[prefix]
                        nxt[prefix] = (n_s, log_add(n_ns, ns + p))
                        n_prefix = prefix + (u,)
                        n_s, n_ns = nxt[n_prefix]
                        nxt[n_prefix] = (n_s, log_add(n_ns, s + p))
                    else:
                        n_prefix = prefix + (u,)
                        n_s, n_ns = nxt[n_prefix]
                        nxt[n_prefix] = (n_s, log_add(n_ns, log_add(s, ns) + p))
            cur = sorted(nxt.items(), key=lambda x: log_add(*x[1]), reverse=True)[:beam_size]
        nbest = [list(prefix) for prefix, _ in cur]
        scores = [log_add(*v) for _, v in cur]
        return DecodeResult(nbest[0], scores[0], nbest, scores)

    @torch.no_grad()
    def attention_rescoring(self, prefix: DecodeResult, encoder_out: torch.Tensor, ctc_weight: float,
                            reverse_weight: float) -> DecodeResult:
        """encoder_out: one utterance, trimmed (1, T', D)."""
        left, right = self._left_right()
        hyps = [torch.tensor(h, dtype=torch.long) for h in prefix.nbest]
        n = len(hyps)
        hyps_lens = torch.tensor([len(h) + 1 for h in hyps], device=encoder_out.device)
        max_len = max(len(h) for h in hyps) + 1
        ys_in = torch.full((n, max_len), self.eos, dtype=torch.long)
        r_ys_in = torch.full((n, max_len), self.eos, dtype=torch.long)
        for i, h in enumerate(hyps):
            ys_in[i, 0] = r_ys_in[i, 0] = self.sos
            ys_in[i, 1:len(h) + 1] = h
            r_ys_in[i, 1:len(h) + 1] = h.flip(0)
        memory = encoder_out.repeat(n, 1, 1)
        memory_mask = torch.ones(n, 1, memory.size(1), dtype=torch.bool, device=memory.device)
        ys_in, r_ys_in = ys_in.to(memory.device), r_ys_in.to(memory.device)
        out = torch.log_softmax(left(memory, memory_mask, ys_in, hyps_lens), dim=-1).cpu()
        use_right = right is not None and reverse_weight > 0
        r_out = torch.log_softmax(right(memory, memory_mask, r_ys_in, hyps_lens), dim=-1).cpu() if use_right else None
        best, best_score, scores = 0, -float("inf"), []
        for i, h in enumerate(prefix.nbest):
            score = sum(out[i, j, w].item() for j, w in enumerate(h)) + out[i, len(h), self.eos].item()
            if use_right:
                r_score = sum(r_out[i, len(h) - 1 - j, w].item() for j, w in enumerate(h)) + \
                    r_out[i, len(h), self.eos].item()
                score = score * (1 - reverse_weight) + r_score * reverse_weight
            score += prefix.nbest_scores[i] * ctc_weight
            scores.append(score)
            if score > best_score:
                best, best_score = i, score
        order = sorted(range(n), key=lambda i: -scores[i])
        return DecodeResult(prefix.nbest[best], best_score, [prefix.nbest[i] for i in order], [scores[i] for i in order])

    @torch.no_grad()
    def attention_beam_search(self, encoder_out: torch.Tensor, encoder_mask: torch.Tensor,
                              beam_size: int) -> list[DecodeResult]:
        left, _ = self._left_right()
        batch, max_len, d = encoder_out.shape
        running = batch * beam_size
        encoder_out = encoder_out.unsqueeze(1).repeat(1, beam_size, 1, 1).view(running, max_len, d)
        encoder_mask = encoder_mask.unsqueeze(1).repeat(1, beam_size, 1, 1).view(running, 1, max_len)
        device = encoder_out.device
        hyps = torch.full((running, 1), self.sos, dtype=torch.long, device=device)
        scores = torch.tensor([0.0] + [-float("inf")] * (beam_size - 1), device=device).repeat(batch).unsqueeze(1)
        end_flag = torch.zeros_like(scores, dtype=torch.bool)
        cache = None
        for i in range(1, max_len + 1):
            if end_flag.sum() == running:
                break
            hyps_mask = subsequent_mask(i, device).unsqueeze(0).repeat(running, 1, 1)
            logp, cache = left.forward_one_step(encoder_out, encoder_mask, hyps, hyps_mask, cache)
            top_k_logp, top_k_index = logp.topk(beam_size)
            # finished hypotheses: one continuation (eos) with score 0, the others -inf
            finished = torch.cat([end_flag, torch.zeros_like(end_flag).repeat(1, beam_size - 1)], 1)
            unfinished = torch.cat([torch.zeros_like(end_flag), end_flag.repeat(1, beam_size - 1)], 1)
            top_k_logp = top_k_logp.masked_fill(unfinished, -float("inf")).masked_fill(finished, 0.0)
            top_k_index = top_k_index.masked_fill(end_flag.repeat(1, beam_size), self.eos)
            scores = (scores + top_k_logp).view(batch, beam_size * beam_size)
            scores, offset_k_index = scores.topk(k=beam_size)
            base = (torch.arange(batch, device=device).view(-1, 1) * beam_size).repeat(1, beam_size).view(-1)
            cache_index = base + (offset_k_index // beam_size).view(-1)
            cache = [c.index_select(0, cache_index) for c in cache]
            scores = scores.view(-1, 1)
            best_k_index = (base * beam_size).view(-1) + offset_k_index.view(-1)
            best_k_pred = top_k_index.view(-1).index_select(0, best_k_index)
            hyps = torch.cat([hyps.index_select(0, best_k_index // beam_size), best_k_pred.view(-1, 1)], 1)
            end_flag = hyps[:, -1].eq(self.eos).view(-1, 1)
        scores = scores.view(batch, beam_size)
        results = []
        for b in range(batch):
            order = scores[b].argsort(descending=True, stable=True).tolist()
            best = int(scores[b].argmax())
            strip = [[t for t in hyps[b * beam_size + k, 1:].tolist() if t != self.eos] for k in range(beam_size)]
            results.append(DecodeResult(strip[best], float(scores[b, best]), [strip[k] for k in order],
                                        [float(scores[b, k]) for k in order]))
        return results

    @torch.no_grad()
    def decode(self, modes: list[str], speech: torch.Tensor, speech_lengths: torch.Tensor, beam_size: int = 10,
               ctc_weight: float = 0.0, reverse_weight: float = 0.0) -> dict[str, list[DecodeResult]]:
        """WeNet's ``ASRModel.decode`` on a (padded) batch."""
        encoder_out, lens, ctc_probs, mask = self.encode(speech, speech_lengths)
        results: dict[str, list[DecodeResult]] = {}
        batch = range(speech.size(0))
        if "ctc_greedy_search" in modes:
            results["ctc_greedy_search"] = [self.ctc_greedy_search(ctc_probs[b], int(lens[b])) for b in batch]
        if "ctc_prefix_beam_search" in modes or "attention_rescoring" in modes:
            prefix = [self.ctc_prefix_beam_search(ctc_probs[b], int(lens[b]), beam_size) for b in batch]
            if "ctc_prefix_beam_search" in modes:
                results["ctc_prefix_beam_search"] = prefix
            if "attention_rescoring" in modes:
                results["attention_rescoring"] = [
                    self.attention_rescoring(prefix[b], encoder_out[b:b + 1, :int(lens[b])], ctc_weight, reverse_weight)
                    for b in batch]
        if "attention" in modes:
            results["attention"] = self.attention_beam_search(encoder_out, mask, beam_size)
        return results
