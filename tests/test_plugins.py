"""Plugins (Triton kernels as torch custom ops: attention, linear_act, token_log_probs, top_k_log_probs,
depthwise_norm_act, and the matmul op's split-K products) against the decompositions of their fused ops.

On the CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), which must be
set before Triton compiles anything, so those cases run in a child process. On a CUDA machine
the same cases also run on the GPU in this process.
"""

import itertools

import pytest
import torch

from plugins import MANY_ROWS
from tests.conftest import under_triton_interpreter

pytest.importorskip("triton")


# name: (batch, heads, queries, keys, head dim, lengths, causal, rel-pos, projection biases added inside, tree mask:
# the real nodes of each row, the rest padding, packed rows: ("q" or "qkv", the real queries of each row, the output
# packed too) or None)
CASES = {
    "rel_pos": (3, 2, 37, 37, 16, [37, 20, 1], False, True, "qkv", None, None),
    "plain_no_lengths": (2, 2, 70, 70, 16, None, False, False, "", None, None),
    "causal_with_lengths": (4, 2, 23, 23, 16, [23, 5, 1, 17], True, False, "qkv", None, None),
    "causal_offset_cache": (2, 2, 3, 40, 16, None, True, False, "q", None, None),
    "cross_grouped_queries": (2, 2, 5 * 9, 66, 16, [66, 31], False, False, "q", None, None),
    "head_dim_not_power_of_two": (2, 3, 19, 19, 12, [19, 7], False, True, "qkv", None, None),
    "empty_key_row_gives_zeros": (2, 2, 8, 8, 16, [8, 0], False, False, "", None, None),
    "tree_blocks_skipped": (3, 2, 300, 300, 16, None, False, False, "qkv", [300, 171, 2], None),
    "packed_tree": (3, 2, 150, 150, 16, None, False, False, "qkv", [150, 77, 3], ("qkv", [150, 77, 3], False)),
    "packed_tree_out": (3, 2, 150, 150, 16, None, False, False, "qkv", [150, 77, 3], ("qkv", [150, 77, 3], True)),
    "long_tree": (2, 1, 1100, 1100, 16, None, False, False, "", [1100, 530], None),
    "packed_queries_cross": (3, 2, 90, 50, 16, [50, 23, 9], False, False, "q", None, ("q", [90, 0, 65], False)),
    "packed_queries_cross_out": (3, 2, 90, 50, 16, [50, 23, 9], False, False, "q", None, ("q", [90, 0, 65], True)),
}


def random_tree_ends(nodes: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Subtree ends of a random tree of ``nodes`` in pre-order, mostly long chains (as hypotheses' tries), then
    padding up to ``size`` (end 0: attends to nothing). A depth sequence with depth[i] <= depth[i-1] + 1 is a
    pre-order walk; node j's subtree ends at the first later node no deeper than it."""
    depth = [0]
    for _ in range(1, nodes):
        back = torch.rand(1, generator=g).item() < 0.05 and depth[-1] > 0
        depth.append(int(torch.randint(1, depth[-1] + 1, (1,), generator=g)) if back else depth[-1] + 1)
    ends = [next((i for i in range(j + 1, nodes) if depth[i] <= depth[j]), nodes) for j in range(nodes)]
    return torch.tensor(ends + [0] * (size - nodes), dtype=torch.int32)


# name: (x shape (..., K), N, activation, bias, out_dtype): partial tiles in rows and columns, K below and above a
# tile; glu's N is the weight's rows (twice the output's columns)
LINEAR_CASES = {
    "swish_ffn": ((2, 37, 64), 200, "swish", True, None),
    "relu_k16_4d": ((3, 5, 7, 16), 48, "relu", True, None),
    "relu_decoder_ffn": ((2, 21, 64), 200, "relu", True, None),  # the op's lowering: cuBLASLt's relu epilogue
    "relu_odd_k_no_bias": ((19, 40), 24, "relu", False, None),
    "swish_two_k_tiles": ((130, 96), 130, "swish", True, None),
    "glu_fp32_out_partial_columns": ((2, 45, 64), 192, "glu", True, torch.float32),
    "glu_no_bias_two_k_tiles": ((70, 96), 64, "glu", False, None),
}

# name: (x shape (..., K), N): a half GEMM over few rows, which the matmul op's lowering runs as the split-K plugin
# (``plugins.split_k``): an FFN's w_2 split over K, K off the split size with partial row and column tiles, one pass
# (a short K) over the wider tiles and over a K off the step
SPLIT_K_CASES = {
    "ffn_w2_split": ((3, 41, 2048), 256),
    "partial_split_and_tiles": ((70, 1088), 80),
    "one_pass_wide": ((2, 30, 256), 768),
    "one_pass_odd_k": ((45, 100), 40),
}


def make_split_k_inputs(case: str, dtype: torch.dtype, device: str = "cpu"):
    shape, n = SPLIT_K_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    x = torch.randn(*shape, generator=g).to(dtype=dtype, device=device)
    return x, (torch.randn(n, shape[-1], generator=g) / shape[-1] ** 0.5).to(dtype=dtype, device=device)


def matmul_lowering(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The ``matmul`` op's PyTorch lowering of x·weightᵀ, which takes the split-K plugin for half x (checked)."""
    from core.ops import MatMul
    from plugins import split_k

    assert split_k.takes(x, weight.t()) == (x.dtype != torch.float32)
    return MatMul.torch(x, weight, transpose_b=True)


# name: (x shape (..., K), vocabulary V, weight rows R >= V): partial tiles in rows and vocabulary, K off a tile
TOKEN_CASES = {
    "three_vocab_tiles_padded_weight": ((3, 37, 96), 300, 320),
    "odd_k_one_partial_tile": ((50, 40), 130, 130),
}

# name: (x (B, T, C), kernel size, padding, valid frames per utterance or None, padding frames' value or zero,
# LayerNorm, activation): the u2++ conv module (causal: left padding that reads GLU(bias), a norm), the conformer's
# (symmetric zero padding, masked frames, batch norm folded away), channels off a power of two with a partial frame
# tile, a value padded on both sides
DEPTHWISE_CASES = {
    "causal_pad_value_norm_swish": ((2, 44, 64), 8, (7, 0), None, True, True, "swish"),
    "symmetric_valid_no_norm": ((3, 30, 48), 15, (7, 7), [30, 12, 1], False, False, "swish"),
    "relu_norm_odd_channels": ((2, 20, 40), 3, (1, 1), [20, 9], False, True, "relu"),
    "pad_value_both_sides_valid": ((2, 20, 40), 5, (2, 2), [20, 9], True, False, "relu"),
}


def make_depthwise_inputs(case: str, dtype: torch.dtype, device: str = "cpu"):
    shape, k, (left, right), lengths, pad_value, norm, activation = DEPTHWISE_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    x = torch.randn(*shape, generator=g).to(dtype=dtype, device=device)
    taps = (torch.randn(shape[2], k, generator=g) / k ** 0.5).to(device)
    bias = torch.randn(shape[2], generator=g).to(device)
    valid = (torch.arange(shape[1])[None, :] < torch.tensor(lengths)[:, None]).to(device) if lengths else None
    pad_value = torch.randn(shape[2], generator=g).to(device) if pad_value else None
    norm_weight, norm_bias = ((1 + 0.1 * torch.randn(shape[2], generator=g)).to(device),
                              torch.randn(shape[2], generator=g).to(device)) if norm else (None, None)
    return x, taps, bias, valid, pad_value, norm_weight, norm_bias, k, left, right, 1e-5, activation, dtype


# name: (leading dims, K, weight rows R, vocabulary V, k, integer logits (ties: x integers, the weight the
# identity)): a partial last vocabulary tile, padded weight rows, the best labels in a last tile of fewer real
# columns than k, the k best in one group of 16 labels, ties broken to the lower label, k = 1, several row blocks,
# the AISHELL vocabulary, ties across tiles
TOP_K_CASES = {
    "partial_last_tile": ((3, 7), 40, 300, 300, 5, False),
    "padded_weight_rows": ((20,), 64, 320, 256, 8, False),
    "best_in_a_short_last_tile": ((4,), 32, 130, 130, 3, False),
    "best_in_one_group": ((5,), 32, 300, 300, 10, False),  # all k best among labels 32-47
    "ties_to_lower_label": ((6,), 100, 100, 100, 10, True),
    "k_one": ((5,), 16, 64, 64, 1, False),
    "row_blocks": ((2, 150), 32, 200, 200, 4, False),
    "aishell_vocabulary": ((6,), 512, 4288, 4233, 10, False),
    "ties_across_tiles": ((4,), 2100, 2100, 2100, 10, True),  # the best tie from label 2,040 on, past a tile's end
}


def make_top_k_inputs(case: str, dtype: torch.dtype = torch.float32,
                      device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    leading, inner, rows, vocab, k, ties = TOP_K_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    if ties:
        x, weight = torch.randint(0, 3, (*leading, inner), generator=g).float(), torch.eye(rows, inner)
        bias = torch.zeros(vocab)
    else:
        x = torch.randn(*leading, inner, generator=g)
        weight = 3 * torch.randn(rows, inner, generator=g) / inner ** 0.5
        bias = torch.randn(vocab, generator=g)
    if case == "best_in_a_short_last_tile":
        bias[128:] += 8.0
    if case == "best_in_one_group":
        bias[32:48] += 20.0
    if case == "ties_across_tiles":
        x[..., :2040] = 0.0
    return x.to(dtype=dtype, device=device), weight.to(dtype=dtype, device=device), bias.to(device), k


def top_k_failures(device: str) -> list[str]:
    """The cases (fp32 and half inputs) where the kernels' (values, labels) are not a top k of the log-softmax (ties:
    not in label order), or differ from the decomposition's beyond near-ties."""
    from plugins.top_k_log_probs import config, decomposed, launch
    from tests.reference_check import assert_same_top_k, assert_top_k_of

    failures = []
    for (case, (_, inner, _, vocab, k, ties)), (plan, rows) in itertools.product(
            TOP_K_CASES.items(), PLANNED_ROWS.items()):
        tol = 2e-6 * inner ** 0.5  # fp32 sums of K products in another order
        for dtype in (torch.float32, torch.float16):
            x, weight, bias, k = make_top_k_inputs(case, dtype, device)
            values, labels = launch(x, weight, bias, k, **config(inner, rows))
            exact = x.cpu().double() @ weight[:vocab].cpu().double().T + bias.cpu().double()
            log_probs = torch.log_softmax(exact, -1)
            try:
                assert values.shape == labels.shape == (*x.shape[:-1], k) and labels.dtype == torch.int32
                assert_top_k_of(values.cpu().double(), labels.cpu(), log_probs, tol)
                if ties:  # a stable sort orders tied log-probs by label
                    want = torch.sort(-log_probs, stable=True, dim=-1).indices[..., :k]
                    assert torch.equal(labels.long().cpu(), want)
                else:
                    assert_same_top_k((values, labels), decomposed(x, weight, bias, k), 2 * tol)
            except AssertionError as e:
                failures.append(f"{case}/{str(dtype)[6:]}/{plan}: {e}")
    return failures


def packed_rows(counts: list[int], size: int, g: torch.Generator) -> torch.Tensor:
    """(B, size) int32: the packed row of query m of row b for m < counts[b], else -1; the packed rows are all
    sum(counts) rows in a random order, so that nothing depends on rows being in sequence."""
    order = torch.randperm(sum(counts), generator=g).to(torch.int32)
    rows = torch.full((len(counts), size), -1, dtype=torch.int32)
    for b, (start, count) in enumerate(zip([0, *torch.tensor(counts).cumsum(0).tolist()], counts)):
        rows[b, :count] = order[start:start + count]
    return rows


def pack(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, H, M, D) -> the packed (1, H, P, D) whose row rows[b, m] is x[b, :, m]."""
    out = x.new_zeros((1, x.shape[1], int((rows >= 0).sum()), x.shape[3]))
    for b, m in (rows >= 0).nonzero().tolist():
        out[0, :, rows[b, m]] = x[b, :, m]
    return out


def slots_of(rows: torch.Tensor) -> torch.Tensor:
    """(P,) int32: the (B, M) position b * M + m of each packed row, rows[b, m]."""
    slots = torch.empty(int((rows >= 0).sum()), dtype=torch.int32, device=rows.device)
    present = (rows >= 0).flatten()
    slots[rows.flatten()[present].long()] = present.nonzero().flatten().int()
    return slots


def make_inputs(case: str, dtype: torch.dtype, device: str = "cpu"):
    batch, heads, m, n, d, lengths, causal, rel_pos, biases, tree, packed = CASES[case]
    g = torch.Generator().manual_seed(len(case))

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)

    q = rand(batch, m, heads, d).transpose(1, 2)  # the layers' (B, T, H, D) -> (B, H, T, D) view
    k, v = rand(batch, heads, n, d), rand(batch, heads, n, d)
    key_lengths = torch.tensor(lengths, dtype=torch.int32, device=device) if lengths is not None else None
    key_ends = torch.stack([random_tree_ends(nodes, n, g) for nodes in tree]).to(device) if tree else None
    pos = (rand(1, heads, n, d), rand(heads, d), rand(heads, d)) if rel_pos else (None, None, None)
    q_bias = rand(heads, d) if "q" in biases else None
    kv_bias = (rand(heads, d), rand(heads, d)) if "kv" in biases else (None, None)
    rows, slots, packed_kv = None, None, False
    if packed:
        rows, packed_kv = packed_rows(packed[1], m, g).to(device), packed[0] == "qkv"
        q = pack(q, rows)
        if packed_kv:
            k, v = pack(k, rows), pack(v, rows)
        if packed[2]:
            slots = slots_of(rows)
    return (q, k, v, key_lengths, key_ends, rows, slots, *pos, q_bias, *kv_bias, 1 / d**0.5, causal, packed_kv)


def decomposed(args) -> torch.Tensor:
    from plugins.attention import decomposed

    return decomposed(*args)


def make_linear_inputs(case: str, dtype: torch.dtype, device: str = "cpu"):
    shape, n, activation, has_bias, out_dtype = LINEAR_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    x = torch.randn(*shape, generator=g).to(dtype=dtype, device=device)
    weight = (torch.randn(n, shape[-1], generator=g) / shape[-1] ** 0.5).to(dtype=dtype, device=device)
    bias = torch.randn(n, generator=g).to(dtype=dtype, device=device) if has_bias else None
    return x, weight, bias, activation, out_dtype


def make_token_inputs(case: str, dtype: torch.dtype, device: str = "cpu"):
    shape, vocab, rows = TOKEN_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    x = torch.randn(*shape, generator=g).to(dtype=dtype, device=device)
    weight = (3 * torch.randn(rows, shape[-1], generator=g) / shape[-1] ** 0.5).to(dtype=dtype, device=device)
    bias = torch.randn(vocab, generator=g).to(device)
    targets = torch.randint(0, vocab, shape[:-1], generator=g, dtype=torch.int32)
    targets.view(-1)[:2] = torch.tensor([0, vocab - 1], dtype=torch.int32)  # the first and the last column
    return x, weight, bias, targets.to(device)


def linear_act_lowering(x, weight, bias, activation, out_dtype) -> torch.Tensor:
    """The ``linear_act`` op's PyTorch lowering, which picks the plugin or cuBLASLt's relu epilogue."""
    from core.ops import LinearAct

    return LinearAct.torch(x, weight, *([bias] if bias is not None else []), activation=activation,
                           has_bias=bias is not None, out_dtype=str(out_dtype)[6:] if out_dtype else None)


PLANNED_ROWS = {"few": 1, "many": MANY_ROWS}  # every case runs with the tiles a kernel picks for each


def tile_plans(kernel, args) -> dict[str, dict]:
    """The tiles ``kernel`` picks for few and for many rows (``plugins.planned_size``); one plan, its own, for the
    kernels and lowerings that have no choice."""
    from core.ops import linear_act_features
    from plugins import attention, depthwise, linear, triton

    if kernel is attention._launch:
        q, v, key_ends, pos = args[0], args[2], args[4], args[7]
        head_dim = triton.next_power_of_2(max(q.shape[3], v.shape[3]))
        return {plan: attention.config(head_dim, pos is not None, key_ends is not None, rows)
                for plan, rows in PLANNED_ROWS.items()}
    if kernel is linear.launch:
        x, weight, _, activation, _ = args
        n = linear_act_features(weight.shape[0], activation)
        return {plan: linear.config(n, x.shape[-1], activation, rows) for plan, rows in PLANNED_ROWS.items()}
    if kernel is depthwise.launch:
        return {plan: {"block_t": depthwise.frame_tile(rows)} for plan, rows in PLANNED_ROWS.items()}
    return {"planned": {}}


def errors(device: str) -> dict:
    """Max |kernel - decomposition| per plugin (and the linear_act op's lowering), case, dtype and tile plan (the
    decomposition in fp32 on the same inputs)."""
    from plugins import depthwise, linear, token_log_probs
    from plugins.attention import _launch

    out = {}
    for kernel, cases, inputs, reference in (
            (_launch, CASES, make_inputs, decomposed),
            (linear.launch, LINEAR_CASES, make_linear_inputs, lambda args: linear.decomposed(*args)),
            (linear_act_lowering, LINEAR_CASES, make_linear_inputs, lambda args: linear.decomposed(*args)),
            (token_log_probs.launch, TOKEN_CASES, make_token_inputs, lambda args: token_log_probs.decomposed(*args)),
            (depthwise.launch, DEPTHWISE_CASES, make_depthwise_inputs, lambda args: depthwise.decomposed(*args)),
            (matmul_lowering, SPLIT_K_CASES, make_split_k_inputs, lambda args: args[0] @ args[1].T)):
        for case in cases:
            for dtype in (torch.float32, torch.float16):
                args = inputs(case, dtype, device)
                as_fp32 = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
                want = reference(as_fp32)
                for plan, tiles in tile_plans(kernel, args).items():
                    got = kernel(*args, **tiles)
                    out[f"{kernel.__module__}/{case}/{str(dtype)[6:]}/{plan}"] = [
                        float((got.float() - want).abs().max()), float(want.abs().max()),
                        list(got.shape) == list(want.shape), str(got.dtype)[6:], bool((got != got.half()).any())]
    return out


@pytest.fixture(scope="module")
def interpreted():
    return under_triton_interpreter("t.errors('cpu')", "tests.test_plugins")


def _check(results: dict):
    two_plans = len(CASES) + len(LINEAR_CASES) + len(DEPTHWISE_CASES)
    assert len(results) == 2 * (2 * two_plans + len(LINEAR_CASES) + len(TOKEN_CASES) + len(SPLIT_K_CASES))
    for name, (error, scale, same_shape, dtype, beyond_half) in results.items():
        assert same_shape, name
        if "fp32_out" in name:  # the activation's fp32 result, not rounded to half
            assert dtype == "float32" and beyond_half, (name, dtype)
        assert error <= (2e-5 if "/float32/" in name else 2e-3 * max(scale, 1.0)), (name, error)


def test_kernels_match_decompositions_under_the_interpreter(interpreted):
    _check(interpreted)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernels_match_decompositions_on_the_gpu():
    _check(errors("cuda"))


def test_top_k_log_probs_under_the_interpreter():
    assert under_triton_interpreter("t.top_k_failures('cpu')", "tests.test_plugins") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_top_k_log_probs_on_the_gpu():
    assert top_k_failures("cuda") == []


def test_top_k_log_probs_decomposition_is_the_unfused_math():
    from plugins.top_k_log_probs import decomposed as top_k_decomposed

    x, weight, bias, k = make_top_k_inputs("padded_weight_rows")
    values, labels = top_k_decomposed(x, weight, bias, k)
    want = torch.log_softmax(x @ weight[:len(bias)].T + bias, -1).topk(k, -1)
    assert torch.equal(labels.long(), want.indices) and (values - want.values).abs().max() < 1e-5


def test_fully_masked_rows_are_zero_and_others_are_not():
    args = make_inputs("empty_key_row_gives_zeros", torch.float32)
    out = decomposed(args)
    assert out[1].abs().max() == 0 and out[0].abs().min() > 0


def test_decomposition_is_the_unfused_math():
    """Held against torch's own attention (scaled_dot_product_attention with a boolean mask)."""
    q, k, v, key_lengths, _, _, _, pos, u, bias_v, q_bias, k_bias, v_bias, scale, causal, _ = make_inputs(
        "rel_pos", torch.float32)
    got = decomposed((q, k, v, key_lengths, None, None, None, pos, u, bias_v, q_bias, k_bias, v_bias, scale, causal))
    q, k, v = (t + b[None, :, None] for t, b in ((q, q_bias), (k, k_bias), (v, v_bias)))
    q_cat = torch.cat([q + u[None, :, None], q + bias_v[None, :, None]], -1)
    k_cat = torch.cat([k, pos.expand_as(k)], -1)
    mask = (torch.arange(k.shape[2])[None, :] < key_lengths[:, None].long())[:, None, None, :]
    want = torch.nn.functional.scaled_dot_product_attention(q_cat, k_cat, v, attn_mask=mask, scale=scale)
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("case", ["packed_tree", "packed_queries_cross"])
def test_packed_rows_attend_as_their_padded_layout(case):
    """Packed queries (and keys) give what the same rows give in the padded (B, H, M, D) layout, absent ones zeros;
    with the slots, the same outputs packed as the queries."""
    q, k, v, key_lengths, key_ends, rows, _, *rest, scale, causal, packed_kv = make_inputs(case, torch.float32)
    got = decomposed((q, k, v, key_lengths, key_ends, rows, None, *rest, scale, causal, packed_kv))
    packed_out = decomposed((q, k, v, key_lengths, key_ends, rows, slots_of(rows), *rest, scale, causal, packed_kv))
    assert torch.equal(packed_out, pack(got, rows))
    present = rows >= 0

    def unpack(x):
        return torch.where(present[:, None, :, None], x[0][:, rows.clamp(min=0)].transpose(0, 1), 0.0)

    q_pad, k_pad, v_pad = unpack(q), *((unpack(k), unpack(v)) if packed_kv else (k, v))
    want = decomposed((q_pad, k_pad, v_pad, key_lengths, key_ends, None, None, *rest, scale, causal))
    assert got.shape == want.shape == (*rows.shape[:1], q.shape[1], rows.shape[1], v.shape[3])
    assert (got - want).abs()[present[:, None, :, None].expand_as(got)].max() < 1e-5
    assert got[~present[:, None, :, None].expand_as(got)].abs().sum() == 0 and (~present).any()


def test_tree_mask_attends_to_ancestors_only():
    """The tree mask against ancestors found by walking up parents (the nearest earlier node one level up)."""
    q, k, v, _, key_ends, *_, scale, _, _ = make_inputs("tree_blocks_skipped", torch.float32)
    got = decomposed((q, k, v, None, key_ends, None, None, None, None, None, None, None, None, scale, False))
    for b, nodes in enumerate(CASES["tree_blocks_skipped"][-2]):
        ends = key_ends[b, :nodes].tolist()
        depth = [sum(j < i < ends[j] for j in range(i)) for i in range(nodes)]  # ancestors counted by the ends
        parent = [max((j for j in range(i) if depth[j] == depth[i] - 1), default=-1) for i in range(nodes)]
        mask = torch.zeros(nodes, nodes, dtype=torch.bool)
        for i in range(nodes):
            j = i
            while j >= 0:
                mask[i, j], j = True, parent[j]
        want = torch.nn.functional.scaled_dot_product_attention(q[b, :, :nodes], k[b, :, :nodes], v[b, :, :nodes],
                                                                attn_mask=mask, scale=scale)
        assert (got[b, :, :nodes] - want).abs().max() < 1e-5
        assert got[b, :, nodes:].abs().sum() == 0  # padding nodes attend to nothing
        assert mask.sum() < nodes * (nodes + 1) // 2 or nodes < 3  # a tree, not a chain


def test_linear_act_decomposition_is_the_unfused_math():
    x, weight, bias, *_ = make_linear_inputs("swish_ffn", torch.float32)
    from plugins.linear import decomposed as linear_decomposed

    got = linear_decomposed(x, weight, bias, "swish")
    assert (got - torch.nn.functional.silu(torch.nn.functional.linear(x, weight, bias))).abs().max() < 1e-5
    got = linear_decomposed(x, weight, None, "relu")
    assert (got - torch.relu(x @ weight.T)).abs().max() < 1e-5
    x, weight, bias = x.half(), weight.half(), bias.half()
    got = linear_decomposed(x, weight, bias, "glu", torch.float32)
    want = torch.nn.functional.glu((x @ weight.T).float() + bias.float(), -1)  # the product rounded, the rest fp32
    assert got.dtype == torch.float32 and got.shape == (2, 37, 100) and (got - want).abs().max() < 1e-6


def test_token_log_probs_decomposition_is_the_unfused_math():
    x, weight, bias, targets = make_token_inputs("three_vocab_tiles_padded_weight", torch.float32)
    from plugins.token_log_probs import decomposed as token_decomposed

    log_probs = torch.log_softmax(x @ weight[:len(bias)].T + bias, -1)
    want = log_probs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    got = token_decomposed(x, weight, bias, targets)
    assert got.shape == targets.shape and (got - want).abs().max() < 1e-5


def test_depthwise_norm_act_decomposition_is_the_unfused_math():
    from plugins.depthwise import decomposed as depthwise_decomposed

    for case in DEPTHWISE_CASES:
        args = make_depthwise_inputs(case, torch.float32)
        x, taps, bias, valid, pad_value, norm_weight, norm_bias, k, left, right, eps, activation, _ = args
        masked = x if valid is None else torch.where(valid[..., None], x, 0.0)
        if pad_value is not None:  # padding frames of the value (B, frames, C), concatenated
            pads = [pad_value.expand(x.shape[0], n, -1) for n in (left, right)]
            padded = torch.cat([pads[0], masked, pads[1]], 1).transpose(1, 2)
        else:
            padded = torch.nn.functional.pad(masked.transpose(1, 2), (left, right))
        y = torch.nn.functional.conv1d(padded, taps[:, None, :], bias, groups=x.shape[2]).transpose(1, 2)
        if norm_weight is not None:
            y = torch.nn.functional.layer_norm(y, (x.shape[2],), norm_weight, norm_bias, eps)
        want = torch.nn.functional.silu(y) if activation == "swish" else torch.relu(y)
        got = depthwise_decomposed(*args)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5, case


def gather_mismatches(device: str) -> list[str]:
    """``plugins.gather_inputs``: inputs of several dtypes gathered into the leading corners of their buffers, one with
    strided rows (a slice of a longer encoder output), one transposed (copied contiguous first), one that starts
    mid-word (copied first), two of another dtype than their buffer's (converted first), one on the host where the
    buffers are on a GPU (carried in the table); the inputs whose buffer differs from them."""
    from plugins.gather_inputs import InputTable

    g = torch.Generator().manual_seed(0)
    targets = {"tokens": torch.zeros(2, 3, 8, dtype=torch.int32), "lengths": torch.zeros(2, 3, dtype=torch.int64),
               "scores": torch.zeros(2, 3, dtype=torch.float64), "encoder_out": torch.zeros(2, 16, 4, dtype=torch.float16),
               "transposed": torch.zeros(6, 4, dtype=torch.float32), "mid_word": torch.zeros(8, dtype=torch.float16),
               "encoder_lens": torch.zeros(2, dtype=torch.int32)}
    targets = {name: t.to(device) for name, t in targets.items()}
    table = InputTable(targets)
    mismatches = []
    for frames in (11, 16, 5, 11):  # more calls through the same table, the last one of a layout it has seen
        inputs = {"tokens": torch.randint(0, 99, (2, 3, frames // 2), generator=g, dtype=torch.int32),
                  "lengths": torch.randint(0, 9, (2, 3), generator=g, dtype=torch.int32),
                  "scores": torch.randn(2, 3, generator=g, dtype=torch.float64),
                  "encoder_out": torch.randn(2, 20, 4, generator=g).half()[:, :frames],
                  "transposed": torch.randn(4, 5, generator=g).T}
        inputs = {name: t.to(device) for name, t in inputs.items()}
        inputs["mid_word"] = torch.randn(9, generator=g).half().to(device)[1:]
        inputs["encoder_lens"] = torch.tensor([frames, 3])  # on the host, int64
        reads = table.write(inputs)
        table.gather()
        if device == "cuda":
            torch.cuda.synchronize()
        assert len(reads) == len(inputs) - (device == "cuda")
        mismatches += [f"{frames}: {name}" for name, value in inputs.items() if not torch.equal(
            targets[name][tuple(map(slice, value.shape))].cpu(), value.cpu().to(targets[name].dtype))]
    return mismatches


@pytest.mark.parametrize("device", ["interpreter", "cuda"])
def test_gather_inputs_copies_every_input(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    mismatches = (under_triton_interpreter("t.gather_mismatches('cpu')", "tests.test_plugins")
                  if device == "interpreter" else gather_mismatches("cuda"))
    assert mismatches == []


def test_gather_inputs_refuse_what_does_not_fit():
    from plugins.gather_inputs import row_layout

    with pytest.raises(ValueError, match="does not fit"):
        row_layout(torch.zeros(2, 9), (2, 8))
    with pytest.raises(ValueError, match="more than one dim"):
        row_layout(torch.zeros(1, 2, 3), (2, 4, 3))
    with pytest.raises(ValueError, match="32-bit words"):
        row_layout(torch.zeros(3, dtype=torch.int16), (4,))
    value, rows, words, stride, target_stride = row_layout(torch.zeros(2, 20, 4).half()[:, :11], (2, 16, 4))
    assert (rows, words, stride, target_stride) == (2, 22, 40, 32)
