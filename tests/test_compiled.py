"""Compiled engines (export + one symbolic-shape Inductor compilation per network), built and run on the
CPU: same outputs and transcripts as the eager lowering at every batch size and length, with no
specialization to the traced shapes. On a GPU also compiled for it and run with CUDA graphs and
host inputs staged through the page-locked input arena."""

import json
import os

import pytest
import torch

from build import build_engines
from models.wenet.networks import Profiles
from runtime.audio import load_audio
from runtime.frontend import fbank
from runtime.session import EngineDir
from runtime.transcriber import DecodingOptions, Transcriber
from tests.conftest import SHARED, WAVS, sample_flacs
from tests.reference_check import assert_same_top_k
from tests.test_models import TINY_DECODER, TINY_ENCODER, tiny_vocab
from tools.make_random_model import write_random_model


def build_tiny(root, compile_device: str) -> str:
    vocab = tiny_vocab("last")
    conf = {"input_dim": 80, "output_dim": len(vocab), "encoder": "conformer", "decoder": "bitransformer",
            "cmvn_file": "global_cmvn", "encoder_conf": {**TINY_ENCODER, "causal": True, "cnn_module_norm": "layer_norm"},
            "decoder_conf": {**TINY_DECODER, "r_num_blocks": 1}, "model_conf": {"ctc_weight": 0.3, "reverse_weight": 0.3}}
    model_dir = write_random_model(str(root / "model"), conf, vocab, os.path.join(SHARED, "aishell1", "global_cmvn"),
                                   seed=3)
    path = str(root / "engine")
    build_engines(model_dir, path, "float32", Profiles(max_batch_size=4, max_seconds=12, beam_size=4),
                  compile_device=compile_device)
    return path


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("compiled"), "cpu")


def test_build_records_compiled_networks(engine_dir):
    """Two programs per network: batch 1 alone (a static batch: no outputs to cut along it), then batches 2-4."""
    with open(os.path.join(engine_dir, "config.json")) as f:
        config = json.load(f)
    compiled = {name: info["compiled"] for name, info in config["networks"].items() if "compiled" in info}
    assert sorted(compiled) == ["cross_kv", "decoder", "encoder", "r_decoder"]  # decoder_step has unbucketed dims
    for info in compiled.values():
        assert [p["buckets"]["batch"] for p in info["programs"]] == [[1], [2, 4]]
        for program in info["programs"]:
            assert os.path.getsize(os.path.join(engine_dir, program["program"])) > 0
    single, batched = compiled["encoder"]["programs"]
    assert batched["output_dims"] == {"encoder_out": ["batch", None, None], "encoder_out_lens": ["batch"],
                                      "ctc_top_log_probs": ["batch", None, None],
                                      "ctc_top_labels": ["batch", None, None]}
    assert single["output_dims"]["encoder_out_lens"] == [None]
    assert compiled["decoder"]["programs"][1]["output_dims"]["scores"] == ["batch", "hyps"]
    assert compiled["decoder"]["programs"][0]["output_dims"]["scores"] == [None, "hyps"]
    assert compiled["r_decoder"]["programs"][1]["output_dims"]["scores"] == ["batch", "hyps"]
    # the batch-1 program's packed tries hold one utterance's
    rows = [p["buckets"]["trie_rows"][-1] for p in compiled["decoder"]["programs"]]
    assert 4 * rows[0] == rows[1]
    assert [p["opt"]["batch"] for p in config["builder"]["programs"]] == [1, 4]


def test_programs_are_traced_at_their_opt_sizes_which_plugins_plan_for():
    """A program's dims are bounded by its buckets and traced at its opt sizes (a dim it holds one minimal size of is
    static); under torch.export a plugin's planned size is the traced one, with no guard on the symbol."""
    from core.compiled import export_dims
    from core.dtype import DataType
    from core.network import Dim, InputSpec
    from plugins import planned_size

    inputs = {"x": InputSpec("x", DataType.float32, [Dim("batch", 1, 8, 64), Dim("frames", 1, 100, 1000), 4])}
    frames = [128, 256, 1000]
    single = {"opt": {"batch": 1, "frames": 250}, "buckets": {"batch": [1], "frames": frames}}
    batched = {"opt": {"batch": 16, "frames": 250}, "buckets": {"batch": [2, 4, 64], "frames": frames}}
    assert export_dims(inputs, single) == ({"frames": (128, 1000)}, {"batch": 1, "frames": 250})
    assert export_dims(inputs, batched) == ({"batch": (2, 64), "frames": (128, 1000)}, {"batch": 16, "frames": 250})

    planned = []

    class Rows(torch.nn.Module):
        def forward(self, x):
            planned.append(planned_size(x.shape[0] * x.shape[1]))
            return x.reshape(-1, 4) * 2

    dims = {0: torch.export.Dim("batch", min=2, max=64), 1: torch.export.Dim("frames", min=128, max=1000)}
    exported = torch.export.export(Rows(), (torch.zeros(16, 250, 4),), dynamic_shapes=(dims,), strict=False)
    assert planned == [4000] and planned_size(7) == 7
    assert exported.module()(torch.ones(3, 999, 4)).shape == (2997, 4)  # not specialized to the traced sizes


_SCALE = [2.0]  # what the test op below multiplies by, read when Inductor traces it


@torch.library.triton_op("wenet_trt_test::scaled", mutates_args=())
def _scaled(x: torch.Tensor) -> torch.Tensor:
    return x * _SCALE[0]


def test_programs_that_share_a_cache_key_load_their_own(tmp_path):
    """Inductor keys a compiled program by its graph, in which a plugin is its op's name, so two builds that differ
    only inside a plugin (another version of it) save programs under one key. Loaded, each runs its own, in either
    order: through the shared cache one of the two orders ran the first program twice."""
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    from core.compiled import compile_program, load_program

    class Scaled(torch.nn.Module):
        def forward(self, x):
            return (_scaled(x) + 1,)

    paths = []
    for scale in (2.0, 3.0):
        _SCALE[0] = scale
        exported = torch.export.export(Scaled(), (torch.ones(4),), strict=False)
        with temporary_cache_dir(str(tmp_path / f"build{scale}")):  # separate builds (as two machines' would be)
            program = compile_program(exported, {"opt": {}})
        paths.append(str(tmp_path / f"scaled{scale}.inductor"))
        program.save(path=paths[-1], format="binary")
    _SCALE[0] = 0.0  # nothing may trace the op again
    for i, order in enumerate((paths, paths[::-1])):
        with temporary_cache_dir(str(tmp_path / f"shared{i}")):
            got = {path: load_program(path)(torch.ones(4))[0].tolist() for path in order}
        assert got == {paths[0]: [3.0] * 4, paths[1]: [4.0] * 4}


def test_compiled_encoder_equals_eager_at_untraced_shapes(engine_dir):
    eager = EngineDir(engine_dir, "cpu", compiled=False).sessions["encoder"]
    compiled = EngineDir(engine_dir, "cpu", compiled=True).sessions["encoder"]
    g = torch.Generator().manual_seed(0)
    for batch, frames in [(1, 150), (3, 517), (4, 1190)]:  # traced at batch 2: 1, 3 and 4 must not be specialized
        speech = torch.randn(batch, frames, 80, generator=g) * 3 + 10
        lengths = torch.tensor([frames - 40 * i for i in range(batch)], dtype=torch.int32)
        want = eager.run({"speech": speech, "speech_lengths": lengths})
        got = compiled.run({"speech": speech, "speech_lengths": lengths})
        assert torch.equal(got["encoder_out_lens"], want["encoder_out_lens"])
        assert got["encoder_out"].shape[0] == batch and got["encoder_out"].shape[1] >= want["encoder_out"].shape[1]
        for i, n in enumerate(want["encoder_out_lens"].tolist()):  # beyond the lengths: bucket padding
            torch.testing.assert_close(got["encoder_out"][i, :n], want["encoder_out"][i, :n], atol=1e-4, rtol=1e-4)
            assert_same_top_k((got["ctc_top_log_probs"][i, :n], got["ctc_top_labels"][i, :n]),
                              (want["ctc_top_log_probs"][i, :n], want["ctc_top_labels"][i, :n]), 1e-4)


def check_pipeline(engine_dir: str, device: str) -> None:
    """The compiled engines on ``device`` give the eager CPU lowering's transcripts and scores, at a full batch,
    then at a smaller one (padded rows) and a full one again (reused CUDA graphs and input buffers); and so do
    the whole file pipeline (uploads, overlapped batches), a lone batch of files, and each file alone (on a GPU:
    one CUDA graph from wave to scores, ``runtime.file_graphs``, also when its n-best does not fit the graph's chain
    tries), where a bad file is a failure naming it."""
    files = WAVS + sample_flacs(3)
    feats = [fbank(load_audio(p)) for p in files][-4:]  # the built max batch
    options = DecodingOptions(["ctc_greedy_search", "ctc_prefix_beam_search", "attention_rescoring"], 4, batch_size=4)
    eager = Transcriber(engine_dir, "cpu", compiled=False)
    compiled = Transcriber(engine_dir, device, compiled=True)
    for batch in (feats, feats[1:], feats):
        want, got = eager.decode(batch, options), compiled.decode(batch, options)
        for mode in options.modes:
            assert [r.tokens for r in got[mode]] == [r.tokens for r in want[mode]], mode
            for a, b in zip(got[mode], want[mode]):
                assert abs(a.score - b.score) < 1e-3, mode
    items = [(f"utt{i}", path) for i, path in enumerate(files)]
    options.batch_size = 2

    def texts(transcriber: Transcriber, items: list[tuple[str, str]]) -> dict:
        return {(r.key, r.mode): r.text for r in transcriber.transcribe(items, options)}

    want = texts(eager, items)
    assert len(want) == len(items) * len(options.modes)
    assert texts(compiled, items) == want
    # a lone batch (on a GPU: rescored from the n-best the search left there, ``runtime.decoding.DeviceRescoring``)
    assert texts(compiled, items[:2]) == {k: v for k, v in want.items() if k[0] in ("utt0", "utt1")}
    assert {k: v for item in items for k, v in texts(compiled, [item]).items()} == want
    if compiled.file_graphs is not None:  # chains with no room for any token: every n-best rescored by the staged path
        compiled.file_graphs.chain_room = 0.0
        assert {k: v for item in items for k, v in texts(compiled, [item]).items()} == want
        spoken = sum(bool(want[(key, "ctc_prefix_beam_search")]) for key, _ in items)  # a best hypothesis with tokens
        assert spoken and compiled.file_graphs.restaged >= spoken
    bad = os.path.join(os.path.dirname(engine_dir), "bad.wav")
    with open(bad, "wb") as f:
        f.write(b"RIFF\0\0\0\0WAVEjunk")
    failures = list(compiled.transcribe([("bad", bad)], options))
    assert len(failures) == 1 and failures[0].key == "bad" and "bad.wav" in failures[0].message


def test_compiled_pipeline_gives_the_eager_transcripts(engine_dir):
    check_pipeline(engine_dir, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_pipeline_gives_the_eager_transcripts(tmp_path):
    check_pipeline(build_tiny(tmp_path, "cuda"), "cuda")
