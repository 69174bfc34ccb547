"""TensorRT engines against the PyTorch lowering: every op, every network, whole transcripts.

These run unchanged where TensorRT and a CUDA GPU are present, and skip with that reason elsewhere.
"""

import pytest
import torch

from build import build_engines
from core.network import Network
from core.tensorrt_backend import TensorRTEngine, build_plan, tensorrt_usable
from core.torch_backend import TorchEngine
from models.wenet.networks import Profiles
from runtime.audio import load_audio
from runtime.frontend import fbank
from runtime.transcriber import MODES, DecodingOptions, Transcriber
from tests.conftest import WAVS
from tests.reference_check import assert_same_top_k
from tools.check_tensorrt_api import every_op_network

pytestmark = pytest.mark.skipif(not tensorrt_usable(), reason="TensorRT (10.x/11.x) and a CUDA GPU are needed")


def run_both(net: Network, inputs: dict[str, torch.Tensor]):
    plan, _ = build_plan(net)
    ours = TensorRTEngine(plan, "cuda")({k: v.cuda() for k, v in inputs.items()})
    ref = TorchEngine(net, "cuda")({k: v.cuda() for k, v in inputs.items()})
    return ours, ref


def test_every_op_matches_the_pytorch_lowering():
    net = every_op_network()
    x = torch.randn(3, 11, 4)
    ours, ref = run_both(net, {"x": x, "n": torch.tensor([11, 5, 1], dtype=torch.int32)})
    for name in ref:
        torch.testing.assert_close(ours[name].float(), ref[name].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("float16", 5e-3)])
@pytest.mark.parametrize("recipe", ["conformer", "u2pp"])
def test_networks_and_transcripts_match(random_models, tmp_path, recipe, dtype, tol):
    model_dir, _ = random_models[recipe]
    profiles = Profiles(max_batch_size=4, max_seconds=12, beam_size=4)
    build_engines(model_dir, str(tmp_path / "trt"), dtype, profiles, backend="tensorrt")
    build_engines(model_dir, str(tmp_path / "torch"), dtype, profiles, backend="torch")
    feats = [fbank(load_audio(w)) for w in WAVS[:2]]
    trt_run, torch_run = Transcriber(str(tmp_path / "trt"), "cuda"), Transcriber(str(tmp_path / "torch"), "cuda")
    a, b = trt_run.encoding.encode(feats), torch_run.encoding.encode(feats)
    scale = b.encoder_out.float().abs().max()
    assert (a.encoder_out.float() - b.encoder_out.float()).abs().max() <= tol * (scale if dtype == "float16" else 1)
    scale = b.ctc_top_log_probs.abs().max() if dtype == "float16" else 1
    assert_same_top_k((a.ctc_top_log_probs, a.ctc_top_labels), (b.ctc_top_log_probs, b.ctc_top_labels), tol * scale)
    options = DecodingOptions(list(MODES), 4, 0.5, 0.3, 4)
    ours, ref = trt_run.decode(feats, options), torch_run.decode(feats, options)
    if dtype == "float32":
        for mode in MODES:
            assert [r.tokens for r in ours[mode]] == [r.tokens for r in ref[mode]]
