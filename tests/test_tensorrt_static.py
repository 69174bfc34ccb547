"""The TensorRT lowering, checked without TensorRT: API conformance against the real 10.x and 11.x bindings,
and the pure-Python parts (profiles, dtype plans, backend selection)."""

import pytest

from core.dtype import DataType
from core.network import Dim, InputSpec
from core.ops import OPS
from core.tensorrt_backend import TRT_DTYPE_NAMES, profile_shapes
from tools.check_tensorrt_api import VERSIONS, bindings_names, missing_names, names_used


def test_every_op_has_both_lowerings():
    for name, op in OPS.items():
        assert callable(getattr(op, "torch", None)) and callable(getattr(op, "tensorrt", None)), name


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
