"""The engine networks of a WeNet model and their shape profiles.

encoder       speech (B,T,80) fp32, speech_lengths (B,) -> encoder_out (B,T',D), encoder_out_lens, each frame's
              top k CTC log-probs (B,T',k) and labels (k: the beam)
cross_kv      encoder_out -> per decoder layer K and V (B,H,T',d_k) (for decoder_step)
decoder       the tries of the N hypotheses (B,M), each hypothesis' path (B,N,S) and steps, CTC scores, weights,
              encoder_out -> its share of the rescored scores (B,N) (attention rescoring, its K/V computed inside)
r_decoder     the same, right to left over the reversed hypotheses' tries (bidirectional models): the scores' rest
decoder_step  last tokens (B*N,1), self-attn caches (B*N,H,S,d_k), K/V -> the best next tokens' log-probs and
              labels (B*N,k), caches (S+1)

The cross K/V are computed once per utterance and broadcast over its N hypotheses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from core import functional as F
from core.dtype import DataType
from core.network import Dim, Network, net_guard
from core.tensor import Tensor
from layers.attention import Packing
from layers.subsampling import subsampled_length
from models.wenet.decoder import TransformerDecoder
from models.wenet.model import WeNetModel

FRAME_SHIFT_SAMPLES = 160
FRAME_LENGTH_SAMPLES = 400


def seconds_to_frames(seconds: float, sample_rate: int = 16000) -> int:
    samples = int(round(seconds * sample_rate))
    return max(0, 1 + (samples - FRAME_LENGTH_SAMPLES) // FRAME_SHIFT_SAMPLES)


def finely_spaced(most: int) -> list[int]:
    """Sizes up to ``most`` at most 1/16 apart (steps of 8 below 128): a size padded to the next wastes <= 6 %."""
    sizes, n = [], 8
    while n < most:
        sizes.append(n)
        n += max(8, 1 << max(0, n.bit_length() - 5))
    return sizes + [most]


@dataclass
class Profiles:
    """The shape ranges the engines are built for (TensorRT optimization profiles)."""

    max_batch_size: int = 16
    opt_batch_size: int = 8
    max_seconds: float = 40.0
    opt_seconds: float = 10.0
    beam_size: int = 10  # the most hypotheses per utterance (prefix beam n-best, attention beams)
    # compiled engines: the largest batch of each program but the last, whose is max_batch_size (``programs``)
    program_batches: tuple[int, ...] = (1,)

    def frames(self, input_layer: str) -> Dim:
        min_frames = 1
        while subsampled_length(min_frames, input_layer) < 1:
            min_frames += 1
        max_frames = seconds_to_frames(self.max_seconds)
        return Dim("frames", min_frames, min(seconds_to_frames(self.opt_seconds), max_frames), max_frames)

    def trie_nodes(self, encoder_frames: int, right: bool, opt_encoder_frames: int) -> Dim:
        """Nodes of one utterance's trie of hypotheses: the root, then at most a hypothesis' tokens and its eos
        per hypothesis. At the opt: the left trie about one hypothesis, the right one about half of them apart."""
        most = 1 + self.beam_size * (encoder_frames + 1)
        opt = (self.beam_size // 2 if right else 1) * (opt_encoder_frames // 2) + self.beam_size
        return Dim("r_trie_nodes" if right else "trie_nodes", 2, min(opt, most), most)

    def dims(self, input_layer: str) -> dict[str, Dim]:
        """Every dynamic dim of the engine networks, by name."""
        frames = self.frames(input_layer)
        encoder = Dim("encoder_frames", 1, subsampled_length(frames.opt, input_layer),
                      subsampled_length(frames.max, input_layer))
        batch = Dim("batch", 1, min(self.opt_batch_size, self.max_batch_size), self.max_batch_size)
        dims = [frames, encoder, batch, Dim("hyps", 1, self.beam_size, self.beam_size),
                Dim("hyp_tokens", 1, min(32, encoder.max + 1), encoder.max + 1),  # a hypothesis' tokens + eos
                Dim("beams", 1, batch.opt * self.beam_size, batch.max * self.beam_size),
                Dim("cache_len", 0, min(16, encoder.max), encoder.max + 1)]
        for right, prefix in ((False, ""), (True, "r_")):
            nodes = self.trie_nodes(encoder.max, right, encoder.opt)
            # a batch's tries, packed back to back
            dims += [nodes, Dim(f"{prefix}trie_rows", 2, batch.opt * nodes.opt, batch.max * nodes.max)]
        return {d.name: d for d in dims}

    def to_json(self) -> dict:
        return asdict(self)

    def buckets(self, input_layer: str) -> dict[str, list[int]]:
        """The shape buckets of the compiled engines' CUDA graphs, per dynamic dim: inputs are padded up to
        the next bucket. Batch: powers of two; audio: steps of 1.28 s; hypotheses: always the beam;
        tokens: steps of 8; trie nodes, and a batch's packed trie rows: at most 1/16 apart. The encoder frames of an
        audio bucket are the buckets of the encoder output."""
        frames = self.frames(input_layer)
        batch = sorted({min(2**i, self.max_batch_size) for i in range(self.max_batch_size.bit_length() + 1)})
        audio = sorted({min(n, frames.max) for n in range(128, frames.max + 128, 128)})
        encoder_max = subsampled_length(frames.max, input_layer)
        tokens_max = encoder_max + 1
        nodes = finely_spaced(1 + self.beam_size * tokens_max)
        rows = finely_spaced(self.max_batch_size * (1 + self.beam_size * tokens_max))  # a batch's tries, packed
        return {"batch": batch, "frames": audio, "encoder_frames": [subsampled_length(n, input_layer) for n in audio],
                "hyps": [self.beam_size], "hyp_tokens": sorted({min(n, tokens_max) for n in range(8, tokens_max + 8, 8)}),
                "trie_nodes": nodes, "r_trie_nodes": nodes, "trie_rows": rows, "r_trie_rows": rows}

    def programs(self, input_layer: str) -> list[dict[str, dict[str, int | list[int]]]]:
        """The compiled engines' programs, one per range of batch sizes (TensorRT's optimization profiles): each
        network is compiled once per program, its kernels' tiles chosen for the program's ``opt`` sizes (its
        ``dims``' opts at that batch range), and serves the sizes of its shape ``buckets``. A batch of one runs
        kernels tiled for 250 rows, a batch of 64 others tiled for 16,000."""
        programs, low = [], 0
        for most in sorted({b for b in self.program_batches if 0 < b < self.max_batch_size} | {self.max_batch_size}):
            # the profile's opt batch where the range holds it, else the range's largest
            opt = self.opt_batch_size if low < self.opt_batch_size <= most else most
            part = replace(self, max_batch_size=most, opt_batch_size=opt)
            buckets = part.buckets(input_layer)
            buckets["batch"] = [b for b in buckets["batch"] if b > low]
            programs.append({"opt": {n: d.opt for n, d in part.dims(input_layer).items()}, "buckets": buckets})
            low = most
        return programs


def cross_kv_names(decoder: TransformerDecoder) -> list[tuple[str, str]]:
    return [(f"{layer.src_attn._name}.key", f"{layer.src_attn._name}.value") for layer in decoder.decoders]


def _add_cross_kv_inputs(net: Network, model: WeNetModel, decoder: TransformerDecoder, batch: Dim,
                         frames: Dim) -> list[tuple[Tensor, Tensor]]:
    heads = model.config.decoder.attention_heads
    dims = [batch, heads, frames, model.config.d_model // heads]
    return [(net.add_input(k, model.decoder_dtype, dims), net.add_input(v, model.decoder_dtype, dims))
            for k, v in cross_kv_names(decoder)]


def top_k(model: WeNetModel, profiles: Profiles) -> int:
    """Labels per row that the CTC head (per frame) and the decoder step (per hypothesis) keep: the widest beam the
    engines serve (WeNet's searches extend each prefix by the top ``beam`` labels only)."""
    return min(profiles.beam_size, model.config.vocab_size)


def encoder_network(model: WeNetModel, profiles: Profiles) -> Network:
    net = Network("encoder")
    with net_guard(net):
        dims = profiles.dims(model.config.encoder.input_layer)
        batch = dims["batch"]
        speech = net.add_input("speech", DataType.float32, [batch, dims["frames"], model.config.input_dim])
        lengths = net.add_input("speech_lengths", DataType.int32, [batch])
        encoder_out, encoder_lens = model.encoder(speech, lengths)
        net.mark_output(F.cast(encoder_out, model.dtype), "encoder_out")
        net.mark_output(encoder_lens, "encoder_out_lens")
        top_log_probs, top_labels = model.ctc.top_k_log_probs(encoder_out, top_k(model, profiles))
        net.mark_output(top_log_probs, "ctc_top_log_probs")
        net.mark_output(top_labels, "ctc_top_labels")
    return net


def cross_kv_network(model: WeNetModel, profiles: Profiles) -> Network:
    net = Network("cross_kv")
    with net_guard(net):
        dims = profiles.dims(model.config.encoder.input_layer)
        memory = net.add_input("encoder_out", model.dtype, [dims["batch"], dims["encoder_frames"], model.config.d_model])
        decoders = model.decoders()
        for name, kv in model.cross_kv(memory).items():
            for (k_name, v_name), (k, v) in zip(cross_kv_names(decoders[name]), kv):
                net.mark_output(k, k_name)
                net.mark_output(v, v_name)
    return net


# per node of the packed tries of hypotheses (``runtime.trie``)
PACKED_TRIE_INPUTS = ("tokens", "positions", "parents", "utterances")


def decoder_networks(model: WeNetModel, profiles: Profiles) -> list[Network]:
    """Attention rescoring: the scores of N hypotheses per utterance in one call per direction, ``decoder`` (left to
    right) and, for a bidirectional model, ``r_decoder`` (right to left). Each returns its share of WeNet's score,
    (1 - rw) * left + ctc_weight * ctc and rw * right, which the runtime adds: the two directions are independent until
    that sum, so they run side by side on two streams. Each runs over the tries of the utterances' hypotheses
    (reversed for the right decoder; ``runtime.trie``), so a shared prefix is computed once; ``hyps_path`` names the
    trie node of each scored step (tokens, then eos) of each hypothesis. The tries of a batch are packed back to back
    (``trie_rows``: no padding rows through the GEMMs; the attention reads them per utterance through
    ``layers.attention.Packing``). The cross K/V are computed inside, so a call takes the encoder output as it is."""
    return [_direction_network(model, profiles, direction) for direction in model.decoders()]


def _direction_network(model: WeNetModel, profiles: Profiles, direction: str) -> Network:
    decoders = model.decoders()
    right = direction == "right"
    prefix = "r_" if right else ""
    net = Network(f"{prefix}decoder")
    with net_guard(net):
        dims = profiles.dims(model.config.encoder.input_layer)
        batch, frames, hyps_dim = dims["batch"], dims["encoder_frames"], dims["hyps"]
        nodes, rows = dims[f"{prefix}trie_nodes"], dims[f"{prefix}trie_rows"]
        hyps_lens = net.add_input("hyps_lens_sos", DataType.int32, [batch, hyps_dim])  # its steps
        tokens, positions, parents, utterances = (net.add_input(f"{prefix}trie_{name}", DataType.int32, [rows])
                                                   for name in PACKED_TRIE_INPUTS)
        ends = net.add_input(f"{prefix}trie_ends", DataType.int32, [batch, nodes])
        starts = net.add_input(f"{prefix}trie_starts", DataType.int32, [batch])
        path = net.add_input(f"{prefix}hyps_path", DataType.int32, [batch, hyps_dim, dims["hyp_tokens"]])
        encoder_out = net.add_input("encoder_out", model.dtype, [batch, frames, model.config.d_model])
        encoder_lens = net.add_input("encoder_out_lens", DataType.int32, [batch])
        # a trie's size is its root's subtree end
        packing = Packing.of(starts, F.slice(ends, 1, 0, 1), utterances, F.shape(ends, 1))
        tokens, positions, parents = (F.unsqueeze(t, 0) for t in (tokens, positions, parents))  # (1, P)
        memory = model.cross_kv(encoder_out, (direction,), bias=False)[direction]
        node_log_probs = decoders[direction](tokens, positions, ends, parents, memory, encoder_lens, packing)  # (1, P)
        steps = F.gather(F.squeeze(node_log_probs, 0), path, 0)  # (B, N, S)
        valid = F.unsqueeze(F.unsqueeze(F.arange(F.shape(path, 2)), 0), 0) < F.unsqueeze(hyps_lens, 2)
        scores = F.sum(F.where(valid, steps, 0.0), [2])
        if "right" in decoders:
            reverse_weight = net.add_input("reverse_weight", DataType.float32, [1])
            scores = scores * reverse_weight if right else scores * (1.0 - reverse_weight)
        if not right:
            ctc_scores = net.add_input("ctc_scores", DataType.float32, [batch, hyps_dim])
            ctc_weight = net.add_input("ctc_weight", DataType.float32, [1])
            scores = scores + ctc_scores * ctc_weight
        net.mark_output(scores, "scores")
    return net


def decoder_step_network(model: WeNetModel, profiles: Profiles) -> Network:
    """One step of attention beam search over the left decoder with a self-attention KV cache."""
    net = Network("decoder_step")
    with net_guard(net):
        dims = profiles.dims(model.config.encoder.input_layer)
        batch, frames, beams, cache_len = dims["batch"], dims["encoder_frames"], dims["beams"], dims["cache_len"]
        decoder = model.decoders()["left"]
        heads = model.config.decoder.attention_heads
        tokens = net.add_input("tokens", DataType.int32, [beams, 1])
        encoder_lens = net.add_input("encoder_out_lens", DataType.int32, [batch])
        memory = _add_cross_kv_inputs(net, model, decoder, batch, frames)
        cache_dims = [beams, heads, cache_len, model.config.d_model // heads]
        cache = [(net.add_input(f"cache.{i}.key", model.decoder_dtype, cache_dims),
                  net.add_input(f"cache.{i}.value", model.decoder_dtype, cache_dims))
                 for i in range(len(decoder.decoders))]
        (top_log_probs, top_labels), new_cache = decoder.step(tokens, cache, memory, encoder_lens,
                                                              top_k(model, profiles))
        net.mark_output(top_log_probs, "top_log_probs")
        net.mark_output(top_labels, "top_labels")
        for i, (k, v) in enumerate(new_cache):
            net.mark_output(k, f"new_cache.{i}.key")
            net.mark_output(v, f"new_cache.{i}.value")
    return net


def build_networks(model: WeNetModel, profiles: Profiles) -> list[Network]:
    return [encoder_network(model, profiles), cross_kv_network(model, profiles),
            *decoder_networks(model, profiles), decoder_step_network(model, profiles)]

