"""Fused ops and their decompositions.

A fused op (``attention``, ``linear_act``, ``token_log_probs``, ``top_k_log_probs``, ``depthwise_norm_act``) is one
node of a network. Its PyTorch lowering is a plugin: a Triton kernel registered as a torch custom op (``plugins/``).
Its TensorRT lowering, and the plugin's path where no kernel runs (the CPU), use its decomposition: the same math in
primitive ops of ``core.functional``, recorded into a small network on demand. The math is written once in our API;
the kernel is held to it by tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import _disable_current_modes

from core import functional as F
from core.dtype import DataType
from core.network import Dim, Network, net_guard
from core.tensor import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None = None, key_ends: Tensor | None = None,
              rows: Tensor | None = None, slots: Tensor | None = None, pos: Tensor | None = None,
              pos_bias_u: Tensor | None = None, pos_bias_v: Tensor | None = None, q_bias: Tensor | None = None,
              k_bias: Tensor | None = None, v_bias: Tensor | None = None, *, scale: float, causal: bool = False,
              packed_kv: bool = False) -> Tensor:
    """softmax(scores * scale) · v over (B, H, M, D) queries and (B, H, N, D) keys, softmax in fp32.

    q, k and v first get their projections' biases (H, D) where given. scores = q·kᵀ, or with ``pos``
    (WeNet's relative-position attention, no rel_shift) (q + u)·kᵀ + (q + pos_bias_v)·posᵀ. Key j of row b is
    attended where j < key_lengths[b]; if ``causal``, j <= i + N - M for query i; with ``key_ends`` (B, N) int32
    (a tree in pre-order, M = N), j <= i < key_ends[b, j]: query i sees the keys whose subtree holds it, its
    ancestors. Rows with no key attended give zeros, as WeNet.

    Packed rows (``rows`` (B, M) int32): q is (1, H, P, D), the rows of all sequences without padding, and query m
    of row b is q[0, :, rows[b, m]], absent where rows[b, m] < 0 (its output zeros); with ``packed_kv`` k and v are
    packed the same way (N = M). The output is in the (B, H, M, Dv) layout all the same, or, with ``slots`` (P,)
    int32, packed as q: (1, H, P, Dv), its row p being query m of row b where slots[p] = b * M + m (a row of P
    that no sequence holds is left undefined by the kernel; here it repeats query 0 of row 0).
    """
    if slots is not None:
        out = attention(q, k, v, key_lengths, key_ends, rows, None, pos, pos_bias_u, pos_bias_v, q_bias, k_bias,
                        v_bias, scale=scale, causal=causal, packed_kv=packed_kv)  # (B, H, M, Dv)
        by_slot = F.view(out.transpose(1, 2), [-1, F.shape(out, 1), F.shape(out, 3)])  # (B * M, H, Dv)
        return F.unsqueeze(F.gather(by_slot, slots, 0), 0).transpose(1, 2)
    if rows is not None:
        present = rows > -1
        at = F.maximum(rows, 0)
        q = _unpacked(q, at)
        if packed_kv:
            k, v = _unpacked(k, at), _unpacked(v, at)
    q = q + F.unsqueeze(F.unsqueeze(q_bias, 0), 2) if q_bias is not None else q
    if k_bias is not None:
        k, v = (t + F.unsqueeze(F.unsqueeze(b, 0), 2) for t, b in ((k, k_bias), (v, v_bias)))
    if pos is not None:
        u, bias_v = (F.unsqueeze(F.unsqueeze(b, 0), 2) for b in (pos_bias_u, pos_bias_v))  # (1, H, 1, D)
        scores = F.matmul(q + u, k, transpose_b=True) + F.matmul(q + bias_v, pos, transpose_b=True)
    else:
        scores = F.matmul(q, k, transpose_b=True)
    scores = F.cast(scores, DataType.float32) * scale
    keys = F.arange(F.shape(k, 2))
    mask = None
    if key_lengths is not None:
        mask = F.unsqueeze(F.unsqueeze(F.unsqueeze(keys, 0) < F.unsqueeze(key_lengths, 1), 1), 1)  # (B, 1, 1, N)
    if causal or key_ends is not None:
        queries = F.slice(keys, 0, F.shape(k, 2) - F.shape(q, 2), F.shape(q, 2))  # i + N - M
        allowed = F.unsqueeze(F.unsqueeze(F.unsqueeze(keys, 0) < F.unsqueeze(queries + 1, 1), 0), 0)  # (1, 1, M, N)
        mask = allowed if mask is None else mask & allowed
    if key_ends is not None:  # (B, 1, M, N): i < key_ends[b, j]
        inside = F.unsqueeze(F.unsqueeze(F.unsqueeze(queries, 1), 0) < F.unsqueeze(key_ends, 1), 1)
        mask = mask & inside
    if rows is not None:  # absent queries (B, 1, M, 1) and, packed, absent keys (B, 1, 1, N) attend to nothing
        both = F.unsqueeze(F.unsqueeze(present, 1), 3)
        if packed_kv:
            both = both & F.unsqueeze(F.unsqueeze(present, 1), 2)
        mask = both if mask is None else mask & both
    if mask is None:
        return F.matmul(F.cast(F.softmax(scores, -1), v.dtype), v)
    attn = F.where(mask, F.softmax(F.where(mask, scores, float("-inf")), -1), 0.0)
    return F.matmul(F.cast(attn, v.dtype), v)


def _unpacked(x: Tensor, rows: Tensor) -> Tensor:
    """Packed heads (1, H, P, D) -> (B, H, M, D): row rows[b, m] at [b, :, m]."""
    return F.permute(F.squeeze(F.gather(x, rows, 2), 0), [1, 0, 2, 3])


def linear_act(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, activation: str,
               out_dtype: str | None = None) -> Tensor:
    """``activation(x·weightᵀ + bias)`` for a torch-layout (N, K) weight; glu: the first half of the N columns times
    the sigmoid of the second. With ``out_dtype``: the product in x's dtype (as a GEMM of that dtype writes it; the
    plugin keeps it in fp32), then the bias and activation computed and returned in ``out_dtype``."""
    y = F.matmul(x, weight, transpose_b=True)
    if out_dtype:
        y = F.cast(y, DataType(out_dtype))
        bias = F.cast(bias, DataType(out_dtype)) if bias is not None else None
    return F.activation(y + bias if bias is not None else y, activation)


def _logits(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """fp32 ``x·weightᵀ + bias`` over the first V = len(bias) rows of weight (the rest pad the GEMM)."""
    logits = F.matmul(x, weight, transpose_b=True, out_dtype=DataType.float32)
    return F.slice(logits, x.ndim - 1, 0, F.shape(bias, 0)) + bias


def token_log_probs(x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """``log_softmax(x·weightᵀ + bias)`` at each row's target, fp32: x (..., K), weight (R, K) of which the first
    V = len(bias) rows count (the rest pad the GEMM), fp32 bias (V,), int32 targets (...) -> (...)."""
    log_probs = F.log_softmax(_logits(x, weight, bias), -1)
    return F.squeeze(F.gather_elements(log_probs, F.unsqueeze(targets, targets.ndim), x.ndim - 1), x.ndim - 1)


def top_k_log_probs(x: Tensor, weight: Tensor, bias: Tensor, *, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of ``log_softmax(x·weightᵀ + bias)`` per row, largest first, and their labels: x
    (..., K), weight (R, K) of which the first V = len(bias) rows count, fp32 bias (V,) -> fp32 (..., k), int32
    (..., k). Exactly tied entries may come in either order."""
    return F.topk(F.log_softmax(_logits(x, weight, bias), -1), k, -1)


def depthwise_norm_act(x: Tensor, taps: Tensor, bias: Tensor, valid: Tensor | None = None,
                       pad_value: Tensor | None = None, norm_weight: Tensor | None = None,
                       norm_bias: Tensor | None = None, *, kernel_size: int, pad_left: int, pad_right: int,
                       eps: float, activation: str, out_dtype: str) -> Tensor:
    """The conformer conv module's middle: ``activation(cast(norm(depthwise_conv(x)), out_dtype))`` on channels-last
    x (B, T, C), in fp32 up to the cast: frames where ``valid`` (B, T) is false read as zero, then ``pad_left`` /
    ``pad_right`` padding frames, zero or ``pad_value`` (C,) fp32; the convolution is the sum of ``kernel_size``
    time-shifted slices times per-channel taps (C, kernel_size) in order, plus bias (C,); the norm a LayerNorm over C
    where given. -> (B, T', C)."""
    f32 = DataType.float32
    x = F.cast(x, f32)
    if valid is not None:
        x = F.where(F.unsqueeze(valid, 2), x, 0.0)
    if pad_left or pad_right:
        padded = F.pad(x, 1, pad_left, pad_right)
        if pad_value is not None:  # (1, T + pads, 1): true at x's own frames
            own = F.pad(F.arange(F.shape(x, 1)), 0, pad_left, pad_right, value=-1) > -1
            padded = F.where(F.unsqueeze(F.unsqueeze(own, 0), 2), padded, pad_value)
        x = padded
    frames = F.shape(x, 1) - (kernel_size - 1)
    y = None
    for i in range(kernel_size):
        term = F.slice(x, 1, i, frames) * F.squeeze(F.slice(taps, 1, i, 1), 1)
        y = term if y is None else y + term
    y = y + bias
    if norm_weight is not None:
        y = F.layer_norm(y, norm_weight, norm_bias, eps)
    return F.activation(F.cast(y, DataType(out_dtype)), activation)


DECOMPOSITIONS: dict[str, Callable[..., Tensor | tuple[Tensor, ...]]] = {
    "attention": attention, "linear_act": linear_act, "token_log_probs": token_log_probs,
    "top_k_log_probs": top_k_log_probs, "depthwise_norm_act": depthwise_norm_act}
# per op: the decomposition's arguments that a node's inputs always fill, then the optional ones by their flag
INPUT_NAMES = {"attention": (["q", "k", "v"], [("has_lengths", ["key_lengths"]), ("has_key_ends", ["key_ends"]),
                                               ("has_rows", ["rows"]), ("has_slots", ["slots"]),
                                               ("has_pos", ["pos", "pos_bias_u", "pos_bias_v"]),
                                               ("has_q_bias", ["q_bias"]), ("has_kv_bias", ["k_bias", "v_bias"])]),
               "linear_act": (["x", "weight"], [("has_bias", ["bias"])]),
               "token_log_probs": (["x", "weight", "bias", "targets"], []),
               "top_k_log_probs": (["x", "weight", "bias"], []),
               "depthwise_norm_act": (["x", "taps", "bias"], [("has_valid", ["valid"]), ("has_pad_value", ["pad_value"]),
                                                             ("has_norm", ["norm_weight", "norm_bias"])])}


def _input_names(op: str, attrs: dict) -> list[str]:
    """The decomposition's argument names that a node's inputs fill, in order."""
    names, optional = INPUT_NAMES[op]
    return names + [name for flag, extra in optional if attrs.get(flag) for name in extra]


@functools.lru_cache(maxsize=256)
def _decomposition(op: str, specs: tuple[tuple[DataType, tuple[int, ...]], ...], attrs: tuple) -> Network:
    attrs = dict(attrs)
    net = Network(op)
    # Recorded outside any tracing mode (torch.export, Inductor): its constants must be real tensors.
    with _disable_current_modes(), net_guard(net):
        inputs = {}
        for i, (name, (dtype, shape)) in enumerate(zip(_input_names(op, attrs), specs)):
            dims = [Dim(f"{name}.{axis}", 0, 0, 2**31 - 1) if d == -1 else d for axis, d in enumerate(shape)]
            inputs[name] = net.add_input(f"input{i}", dtype, dims)
        flags = {k: v for k, v in attrs.items() if not k.startswith("has_")}
        outputs = DECOMPOSITIONS[op](**inputs, **flags)
        for i, output in enumerate(outputs if isinstance(outputs, tuple) else (outputs,)):
            net.mark_output(output, f"output{i}")
    return net


def decomposition(op: str, specs: list[tuple[DataType, tuple[int, ...]]], attrs: dict) -> Network:
    """The network that computes fused op ``op`` from primitive ops, for inputs of ``specs``
    (inputs ``input0``, ``input1``, ...; outputs ``output0``, ...)."""
    return _decomposition(op, tuple((d, tuple(s)) for d, s in specs), tuple(sorted(attrs.items())))


@functools.lru_cache(maxsize=256)
def _engine(network: Network, device: torch.device):
    from core.torch_backend import TorchEngine

    with _disable_current_modes():  # real constants, reused by every later call, traced or not
        return TorchEngine(network, device)


def run_decomposition(op: str, inputs: list[torch.Tensor], attrs: dict) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Fused op ``op`` on torch tensors through its decomposition's PyTorch lowering: its output, or a tuple of
    them for an op with several."""
    specs = [(DataType.from_torch(t.dtype), tuple(-1 for _ in t.shape)) for t in inputs]
    network = decomposition(op, specs, attrs)
    out = _engine(network, inputs[0].device)({f"input{i}": t for i, t in enumerate(inputs)})
    outputs = tuple(out[f"output{i}"] for i in range(len(network.outputs)))
    return outputs if len(outputs) > 1 else outputs[0]
