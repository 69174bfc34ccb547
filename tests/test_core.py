"""The network-definition core: ops against torch, strong typing, dynamic shapes, serialization, profiles."""

import pytest
import torch

from core import functional as F
from core.dtype import DataType
from core.module import Module, ModuleList, Parameter
from core.network import Dim, Network, net_guard, save_network
from core.ops import OpError
from core.torch_backend import TorchEngine
from runtime.session import ProfileError, Session

B, T = Dim("batch", 1, 2, 4), Dim("time", 1, 8, 32)


def run(net: Network, **inputs):
    return TorchEngine(net)(inputs)


def test_ops_match_torch_on_dynamic_shapes():
    net = Network("ops")
    with net_guard(net):
        x = net.add_input("x", DataType.float32, [B, T, 6])
        lengths = net.add_input("lengths", DataType.int32, [B])
        heads = F.view(x, [F.shape(x, 0), F.shape(x, 1), 2, 3]).transpose(1, 2)  # (B, 2, T, 3)
        scores = F.matmul(heads, heads, transpose_b=True)
        valid = F.make_valid_mask(lengths, F.shape(x, 1))
        masked = F.where(F.unsqueeze(F.unsqueeze(valid, 1), 1), scores, float("-inf"))
        net.mark_output(F.softmax(masked, -1), "attn")
        net.mark_output(F.log_softmax(x, -1), "logp")
        net.mark_output(F.glu(x, 2), "glu")
        net.mark_output(F.sum(x * 2.0 - 1.0, [1]), "sum")
        net.mark_output(F.slice(x, 1, 1, F.shape(x, 1) - 2), "inner")
        net.mark_output(F.pad(x, 1, 2, 0), "padded")
        index = F.cast(F.unsqueeze(valid, 2), DataType.int32)
        net.mark_output(F.gather_elements(x, index, 2), "picked")
        net.mark_output((lengths - 3) // 2 + 1, "sub_lengths")
    for b, t in [(1, 5), (3, 17), (4, 32)]:
        x = torch.randn(b, t, 6)
        lengths = torch.randint(1, t + 1, (b,), dtype=torch.int32)
        out = run(net, x=x, lengths=lengths)
        heads = x.view(b, t, 2, 3).transpose(1, 2)
        valid = torch.arange(t)[None] < lengths[:, None]
        ref = torch.softmax((heads @ heads.transpose(-1, -2)).masked_fill(~valid[:, None, None], float("-inf")), -1)
        torch.testing.assert_close(out["attn"], ref)
        torch.testing.assert_close(out["logp"], torch.log_softmax(x, -1))
        torch.testing.assert_close(out["glu"], torch.nn.functional.glu(x, 2))
        torch.testing.assert_close(out["sum"], (x * 2 - 1).sum(1))
        torch.testing.assert_close(out["inner"], x[:, 1:t - 1])
        torch.testing.assert_close(out["padded"], torch.nn.functional.pad(x, (0, 0, 2, 0)))
        torch.testing.assert_close(out["picked"], torch.gather(x, 2, valid.long().unsqueeze(2)))
        assert out["sub_lengths"].tolist() == ((lengths - 3) // 2 + 1).tolist()


def test_convolutions_match_torch():
    net = Network("conv")
    w1, b1 = torch.randn(5, 1, 4), torch.randn(5)
    w2, b2 = torch.randn(3, 2, 3, 3), torch.randn(3)
    with net_guard(net):
        x = net.add_input("x", DataType.float32, [B, 5, T])
        img = net.add_input("img", DataType.float32, [B, 2, T, 9])
        net.mark_output(F.conv1d(x, F.constant(w1), F.constant(b1), padding=(3, 0), groups=5), "causal")
        net.mark_output(F.conv2d(img, F.constant(w2), F.constant(b2), stride=2), "strided")
    x, img = torch.randn(2, 5, 11), torch.randn(2, 2, 11, 9)
    out = run(net, x=x, img=img)
    torch.testing.assert_close(out["causal"], torch.nn.functional.conv1d(torch.nn.functional.pad(x, (3, 0)), w1, b1, groups=5))
    torch.testing.assert_close(out["strided"], torch.nn.functional.conv2d(img, w2, b2, stride=2))


def test_networks_are_strongly_typed():
    net = Network("typed")
    with net_guard(net):
        x = net.add_input("x", DataType.float16, [B, 4])
        y = net.add_input("y", DataType.float32, [B, 4])
        with pytest.raises(OpError, match="one dtype"):
            _ = x + y
        with pytest.raises(OpError, match="int64 is reserved"):
            F.cast(F.shape(x), DataType.int32)
        z = F.cast(x, DataType.float32) + y  # explicit casts are how precision changes
        assert z.dtype == DataType.float32
        assert F.cast(y, DataType.float32) is y


def test_view_allows_one_minus_one_and_keeps_static_dims():
    net = Network("view")
    with net_guard(net):
        x = net.add_input("x", DataType.float32, [B, T, 8])
        with pytest.raises(ValueError, match="one -1"):
            F.view(x, [-1, -1, 8])
        y = F.view(x, [F.shape(x, 0), -1, 2, 4])
        assert y.shape == (-1, -1, 2, 4)


class Affine(Module):
    def __init__(self):
        super().__init__()
        self.weight = Parameter((3, 4), DataType.float32)
        self.blocks = ModuleList([Module(), Module()], indices=[0, 2])

    def forward(self, x):
        return F.matmul(x, self.weight.value, transpose_b=True)


def test_modules_name_parameters_and_check_shapes():
    m = Affine()
    m.assign_names("enc")
    assert [n for n, _ in m.named_parameters("enc")] == ["enc.weight"]
    assert [n for n, _ in m.named_modules("enc")] == ["enc", "enc.blocks", "enc.blocks.0", "enc.blocks.2"]
    with pytest.raises(ValueError, match="expected shape"):
        m.weight.set_value(torch.zeros(4, 3))
    net = Network("no_value")
    with net_guard(net), pytest.raises(ValueError, match="has no value"):
        m(net.add_input("x", DataType.float32, [B, 4]))


def test_artifact_round_trip_and_profile_checks(tmp_path):
    m = Affine()
    m.assign_names()
    m.weight.set_value(torch.randn(3, 4))
    net = Network("affine")
    with net_guard(net):
        x = net.add_input("x", DataType.float32, [B, T, 4])
        net.mark_output(m(x), "y")
    path = str(tmp_path / "affine.safetensors")
    save_network(net, path)
    session = Session.from_artifact(path)
    x = torch.randn(2, 7, 4)
    torch.testing.assert_close(session.run({"x": x})["y"], x @ m.weight.raw_value.T)
    with pytest.raises(ProfileError, match=r"dim 1 \(time\) = 33 is outside the built profile \[1, 32\]"):
        session.run({"x": torch.randn(1, 33, 4)})
    with pytest.raises(ProfileError, match="must be float32"):
        session.run({"x": torch.randn(1, 3, 4, dtype=torch.float64)})
    with pytest.raises(ProfileError, match="dim 2 must be 4"):
        session.run({"x": torch.randn(1, 3, 5)})
    with pytest.raises(ProfileError, match="missing inputs"):
        session.run({})
    # an artifact whose network uses an op this code does not have (built by another version) says so
    text = net.to_json().replace('"matmul"', '"gemm"')
    with pytest.raises(ValueError, match=r"ops this version does not have: \['gemm'\].*rebuild"):
        Network.from_json(text, net.constants)


def test_folded_views_of_one_constant_are_saved(tmp_path):
    """Two views of one constant fold into constants of their own: the artifact (safetensors) refuses tensors that
    share memory."""
    bias = torch.randn(4)
    net = Network("views")
    with net_guard(net):
        x = net.add_input("x", DataType.float32, [B, T, 4])
        c = F.constant(bias)
        net.mark_output(F.where(F.gt(x, 0.0), F.unsqueeze(c, 0), x) + F.unsqueeze(c, 0), "y")
    assert net.fold_constants() >= 2
    path = str(tmp_path / "views.safetensors")
    save_network(net, path)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(Session.from_artifact(path).run({"x": x})["y"], torch.where(x > 0, bias, x) + bias)


def test_remaining_ops_match_torch():
    net = Network("misc")
    with net_guard(net):
        x = net.add_input("x", DataType.float32, [B, T])
        values, indices = F.topk(x, 3, -1)
        net.mark_output(values, "values")
        net.mark_output(indices, "indices")
        net.mark_output(F.log(F.exp(x)) + F.sqrt(F.maximum(x, 0.0)), "unary")
        net.mark_output(F.relu(-x) * F.sigmoid(x), "act")
    x = torch.randn(3, 9)
    out = run(net, x=x)
    ref_values, ref_indices = torch.topk(x, 3, -1)
    torch.testing.assert_close(out["values"], ref_values)
    assert out["indices"].dtype == torch.int32 and out["indices"].tolist() == ref_indices.tolist()
    torch.testing.assert_close(out["unary"], torch.log(torch.exp(x)) + torch.sqrt(torch.clamp(x, min=0)))
    torch.testing.assert_close(out["act"], torch.relu(-x) * torch.sigmoid(x))


def test_int8_quantization_ops_and_weight_only_linear():
    from layers.linear import WeightOnlyInt8Linear

    weight = torch.randn(6, 5)
    scale = weight.abs().amax(1) / 127
    layer = WeightOnlyInt8Linear(5, 6, dtype=DataType.float32)
    layer.assign_names("proj")
    layer.weight.set_value(torch.round(weight / scale[:, None]).to(torch.int8))
    layer.per_channel_scale.set_value(scale)
    layer.bias.set_value(torch.zeros(6))
    net = Network("int8")
    with net_guard(net):
        x = net.add_input("x", DataType.float32, [B, 5])
        net.mark_output(layer(x), "y")
        kv_scale = F.constant(torch.tensor(0.05))
        net.mark_output(F.quantize(x, kv_scale), "q")
        net.mark_output(F.dequantize(F.quantize(x, kv_scale), kv_scale), "qdq")
    x = torch.randn(3, 5)
    out = run(net, x=x)
    torch.testing.assert_close(out["y"], x @ weight.T, atol=0.02 * x.abs().sum(1, keepdim=True).max(), rtol=0)
    assert out["q"].dtype == torch.int8
    assert out["q"].tolist() == torch.clamp(torch.round(x / 0.05), -128, 127).to(torch.int8).tolist()
    torch.testing.assert_close(out["qdq"], out["q"].float() * 0.05)


def test_fp32_accurate_operands_on_half_inputs():
    """Split-precision half GEMM with fp32 output: fp32 accuracy where a plain fp16 linear is off by ~1e-3."""
    from layers.linear import Linear, fp32_accurate_operands

    torch.manual_seed(0)
    layer = Linear(64, 37, dtype=DataType.float32)  # 37 rows: padded to 64 inside
    layer.assign_names("proj")
    weight, bias = torch.randn(37, 64) * 0.3, torch.randn(37)
    layer.weight.set_value(weight)
    layer.bias.set_value(bias)
    net = Network("split")
    with net_guard(net):
        x32 = net.add_input("x32", DataType.float32, [B, T, 64])
        x16 = net.add_input("x16", DataType.float16, [B, T, 64])
        for name, x in (("from_fp32", x32), ("from_fp16", x16)):
            product = F.matmul(*fp32_accurate_operands(x, layer, DataType.float16), transpose_b=True,
                               out_dtype=DataType.float32)
            assert product.shape[-1] == 64  # the padded columns
            net.mark_output(F.slice(product, 2, 0, 37) + layer.bias.value, name)
        net.mark_output(F.cast(F.matmul(x16, F.cast(layer.weight.value, DataType.float16), transpose_b=True),
                               DataType.float32), "plain_fp16")
    x = torch.randn(3, 9, 64) * 4
    out = run(net, x32=x, x16=x.half())
    exact = x.double() @ weight.double().T + bias.double()
    exact16 = x.half().double() @ weight.double().T + bias.double()
    assert out["from_fp32"].dtype == out["from_fp16"].dtype == torch.float32
    assert out["from_fp32"].shape == (3, 9, 37)
    assert (out["from_fp32"].double() - exact).abs().max() < 2e-4
    assert (out["from_fp16"].double() - exact16).abs().max() < 2e-4
    assert (out["plain_fp16"].double() - (exact16 - bias.double())).abs().max() > 5e-3  # what the split avoids
