"""The TensorRT lowering, checked without TensorRT: API conformance against the real 10.x and 11.x bindings,
and the pure-Python parts (profiles, dtype plans, backend selection)."""

import pytest

from core.composite import DECOMPOSITIONS
from core.dtype import DataType
from core.network import Dim, InputSpec
from core.ops import OPS
from core.tensorrt_backend import TRT_DTYPE_NAMES, profile_shapes
from tools.check_tensorrt_api import VERSIONS, bindings_names, missing_names, names_used


def test_every_op_has_both_lowerings():
    for name, op in OPS.items():
        fused = getattr(op, "composite", False)
        assert callable(getattr(op, "torch", None)) and (callable(getattr(op, "tensorrt", None)) or fused), name
        if fused:  # lowered to TensorRT through its decomposition
            assert name in DECOMPOSITIONS, name


@pytest.mark.parametrize("version", VERSIONS)
def test_every_tensorrt_name_we_use_exists_in_the_bindings(version):
    used = names_used(version)
    assert {"STRONGLY_TYPED", "add_convolution_nd", "add_normalization", "execute_async_v3"} <= used
    assert not {"set_flag", "precision", "set_output_type"} & used  # strongly typed: no weak-typing controls
    assert missing_names(used, bindings_names(version)) == set()


def test_the_conformance_check_catches_typos_and_removed_apis():
    v10, v11 = (bindings_names(v) for v in VERSIONS)
    assert missing_names({"add_normalizaton", "execute_async_v2"}, v10) == {"add_normalizaton", "execute_async_v2"}
    removed_in_11 = {"OBEY_PRECISION_CONSTRAINTS", "compute_precision"}
    assert missing_names(removed_in_11, v10) == set() and missing_names(removed_in_11, v11) == removed_in_11


def test_profile_shapes_and_dtype_plan():
    batch = Dim("batch", 1, 4, 16)
    spec = InputSpec("speech", DataType.float32, [batch, Dim("frames", 7, 998, 3998), 80])
    assert profile_shapes(spec) == ((1, 7, 80), (4, 998, 80), (16, 3998, 80))
    assert set(TRT_DTYPE_NAMES) == set(DataType)


def test_backend_request_without_tensorrt_is_a_clear_error(random_models, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable here: the error path does not apply")
    except ImportError:
        pass
    import build

    code = build.main(["--model_dir", random_models["u2pp"][0], "--output_dir", str(tmp_path / "e"),
                       "--backend", "tensorrt"])
    assert code == 1
    assert "needs TensorRT 10.x or 11.x" in capsys.readouterr().err


def evaluate_slice_plan(plan, shape, begin, length):
    values = {"zeros": lambda n: [0] * n, "begin": lambda: [begin], "length": lambda: [length],
              "shape": lambda first, count: list(shape[first:first + count])}
    return [v for kind, *args in plan for v in values[kind](*args)]


@pytest.mark.parametrize("shape", [(5,), (2, 7), (2, 9, 4), (3, 2, 6, 5)])
def test_slice_plan_assembles_full_start_and_size_vectors(shape):
    from core.tensorrt_backend import slice_plan

    for axis in range(len(shape)):
        starts, sizes = slice_plan(len(shape), axis)
        start = evaluate_slice_plan(starts, shape, -2, 3)
        size = evaluate_slice_plan(sizes, shape, -2, 3)
        assert start == [0] * axis + [-2] + [0] * (len(shape) - axis - 1)
        assert size == [*shape[:axis], 3, *shape[axis + 1:]]


@pytest.mark.parametrize("kernel, groups, padding", [(15, 8, (7, 7)), (8, 8, (7, 0)), (1, 1, (0, 0))])
def test_conv1d_as_2d_layout_computes_the_same_convolution(kernel, groups, padding):
    import torch

    from core.tensorrt_backend import conv1d_as_2d

    x, weight, bias = torch.randn(2, 8, 30), torch.randn(6 if groups == 1 else 8, 8 // groups, kernel), torch.randn(8)
    bias = bias[:weight.shape[0]]
    shape, stride, pre, post, dilation = conv1d_as_2d(tuple(weight.shape), [1], [padding[0]], [padding[1]], [1])
    assert shape == (*weight.shape, 1)
    ref = torch.nn.functional.conv1d(torch.nn.functional.pad(x, padding), weight, bias, groups=groups)
    x2 = torch.nn.functional.pad(x.unsqueeze(3), (pre[1], post[1], pre[0], post[0]))
    out = torch.nn.functional.conv2d(x2, weight.reshape(shape), bias, stride, 0, dilation, groups).squeeze(3)
    torch.testing.assert_close(out, ref)
