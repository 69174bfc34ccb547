"""build.py and run.py as a user runs them, including bad input: every failure names its file, the rest completes."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile
import torch

import build
import run
from tests.conftest import WAVS


def make_bad_inputs(folder) -> dict[str, str]:
    good, rate = soundfile.read(WAVS[0], dtype="int16")
    files = {
        "corrupt": ("corrupt.wav", None),
        "empty": ("empty.wav", np.zeros(0, dtype=np.int16)),
        "subframe": ("subframe.wav", good[:1000]),  # 62 ms: too short for one encoder frame
        "nan": ("nan.wav", None),
        "format": ("format.mp3", None),
        "too_long": ("too_long.flac", np.tile(good, 6)),  # > the engine's 20 s
    }
    paths = {}
    for key, (name, samples) in files.items():
        path = os.path.join(folder, name)
        if samples is not None:
            soundfile.write(path, samples, rate)
        paths[key] = path
    with open(paths["corrupt"], "wb") as f:
        f.write(open(WAVS[0], "rb").read()[:60] + b"\xff" * 10)
    soundfile.write(paths["nan"], np.array([0.1, np.nan] * 8000, dtype=np.float32), 16000, subtype="FLOAT")
    with open(paths["format"], "w") as f:
        f.write("ID3 not really an mp3")
    paths["missing"] = os.path.join(folder, "missing.wav")
    return paths


def test_run_transcribes_good_files_and_names_each_bad_one(tmp_path, random_models, capsys):
    engine_dir = random_models["u2pp"][1]
    bad = make_bad_inputs(str(tmp_path))
    jsonl = tmp_path / "results.jsonl"
    code = run.main(["--engine_dir", engine_dir, "--input_file", WAVS[0], *bad.values(), WAVS[1],
                     "--modes", "ctc_greedy_search", "attention_rescoring", "--beam_size", "4",
                     "--results_jsonl", str(jsonl)])
    out, err = capsys.readouterr()
    assert code == 1  # something failed
    good_keys = [os.path.splitext(os.path.basename(w))[0] for w in WAVS[:2]]
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    assert sorted(line.split("\t")[0] for line in lines) == sorted(good_keys * 2)
    for key, path in bad.items():
        assert path in err, f"the error for {key} must name its file"
    assert "too short" in err and "NaN" in err and "longer than the engines were built for" in err
    assert "transcribed 2/9 files" in err
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert set(r) == {"key", "mode", "text", "tokens", "score", "nbest", "nbest_scores"}
        assert r["key"] in good_keys and r["tokens"] == r["nbest"][0] and len(r["nbest"]) == len(r["nbest_scores"])


def test_run_reads_wav_scp_with_relative_paths(tmp_path, random_models, capsys):
    shutil.copy(WAVS[1], tmp_path / "a.wav")
    (tmp_path / "wav.scp").write_text("utt_a a.wav\nutt_b " + WAVS[0] + "\n")
    code = run.main(["--engine_dir", random_models["conformer"][1], "--wav_scp", str(tmp_path / "wav.scp"),
                     "--modes", "ctc_prefix_beam_search", "--beam_size", "3", "--verbose"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "8.5 s of audio" in err and "real-time factor" in err and "first result" in err
    stages = err.split("seconds per stage: ")[1].splitlines()[0]
    from plugins import runs_on_gpu

    # on a GPU (run.py's default device where there is one) the search runs there; elsewhere its top-k candidates
    # are copied back and searched natively
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    search = ["ctc prefix beam search"] if runs_on_gpu(device) else ["ctc candidates", "ctc prefix beam search"]
    assert [part.rsplit(" ", 1)[0] for part in stages.split(", ")] == ["read audio", "fbank", "encoder+ctc", *search]
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == ["utt_a", "utt_b"]


def test_run_rejects_a_beam_beyond_the_built_profile(random_models, capsys):
    code = run.main(["--engine_dir", random_models["u2pp"][1], "--input_file", WAVS[0], "--modes", "attention",
                     "--beam_size", "11"])
    assert code == 2
    assert "beam size 11 is outside the built engines' [1, 10]" in capsys.readouterr().err


def test_missing_engine_and_model_files_are_clear_errors(tmp_path, random_models, capsys):
    assert run.main(["--engine_dir", str(tmp_path / "nope"), "--input_file", WAVS[0]]) == 2
    assert "not an engine dir" in capsys.readouterr().err
    assert build.main(["--model_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "e")]) == 1
    assert "model dir not found" in capsys.readouterr().err
    model_dir = shutil.copytree(random_models["conformer"][0], tmp_path / "m")
    os.remove(model_dir / "train.yaml")
    assert build.main(["--model_dir", str(model_dir), "--output_dir", str(tmp_path / "e")]) == 1
    assert "train.yaml: not found" in capsys.readouterr().err


def test_demo_engines_are_rebuilt_when_missing_or_built_by_other_code(tmp_path, random_models, monkeypatch):
    engine_dir = tmp_path / "demo"
    monkeypatch.setattr(run, "DEMO_ENGINE_DIR", str(engine_dir))
    assert run.demo_engines_outdated("cpu") == "once"
    shutil.copytree(random_models["u2pp"][1], engine_dir)
    assert run.demo_engines_outdated("cpu") is None  # built by this code
    with open(engine_dir / "config.json") as f:
        config = json.load(f)
    config["builder"]["code"] = "0" * 16
    with open(engine_dir / "config.json", "w") as f:
        json.dump(config, f)
    assert "other code" in run.demo_engines_outdated("cpu")


def test_compiled_engines_of_another_torch_or_layout_are_a_clear_error(tmp_path, random_models):
    from runtime.session import EngineDir

    engine_dir = shutil.copytree(random_models["u2pp"][1], tmp_path / "e")
    with open(engine_dir / "config.json") as f:
        config = json.load(f)
    config["builder"]["compiled"] = {"torch": "1.0.0", "device": "cpu"}
    with open(engine_dir / "config.json", "w") as f:
        json.dump(config, f)
    assert not EngineDir(str(engine_dir), "cpu").compiled  # the CPU runs the uncompiled networks by default
    with pytest.raises(ValueError, match="compiled by torch 1.0.0.*rebuild"):
        EngineDir(str(engine_dir), "cpu", compiled=True)
    config["builder"]["compiled"]["torch"] = torch.__version__  # and a build of the one-program layout
    config["networks"]["encoder"]["compiled"] = {"program": "encoder.inductor", "constants": "encoder.constants.safetensors"}
    with open(engine_dir / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="older build.py.*rebuild"):
        EngineDir(str(engine_dir), "cpu", compiled=True)


def test_engines_with_both_rescoring_directions_in_one_network_are_a_clear_error(tmp_path, random_models):
    from runtime.session import EngineDir

    engine_dir = shutil.copytree(random_models["u2pp"][1], tmp_path / "e")
    with open(engine_dir / "config.json") as f:
        config = json.load(f)
    decoder = config["networks"]["decoder"]
    assert "r_decoder" in config["networks"]
    decoder["inputs"] += [spec for spec in config["networks"].pop("r_decoder")["inputs"] if spec["name"] == "r_hyps_path"]
    with open(engine_dir / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="both rescoring directions in one decoder network.*rebuild"):
        EngineDir(str(engine_dir), "cpu")


def test_overlapped_batches_decode_as_one_batch(random_models):
    """transcribe() overlaps batch i's host search with batch i+1's device work: the results must be those of
    one sequential batch, in every mode, also when stages are timed (no overlap)."""
    from runtime.transcriber import DecodingOptions, Transcriber

    tr = Transcriber(random_models["u2pp"][1], "cpu")
    items = [(f"{i}_{os.path.basename(w)}", w) for i in range(2) for w in WAVS]
    modes = ["ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"]

    def run_all(batch_size: int) -> dict:
        out = tr.transcribe(items, DecodingOptions(modes, 4, batch_size=batch_size))
        return {(r.key, r.mode): (r.result.tokens, r.result.nbest) for r in out}

    one_batch = run_all(len(items))
    assert len(one_batch) == len(items) * len(modes)
    assert run_all(2) == one_batch
    tr.times.enabled = True
    assert run_all(3) == one_batch
    assert {"encoder+ctc", "ctc prefix beam search", "rescoring", "attention beam search"} <= set(tr.times.seconds)


def test_a_batch_that_fails_on_the_device_is_reported_and_the_others_complete(random_models, monkeypatch):
    """A batch whose search fails yields a Failure per file, on the worker thread's path (several batches) and on the
    calling thread's (one batch); the other batches' results are those of a clean run."""
    from runtime.transcriber import DecodingOptions, Failure, Transcriber

    tr = Transcriber(random_models["u2pp"][1], "cpu")
    items = [(os.path.basename(w), w) for w in WAVS]  # 8.7, 4.3 and 4.2 s: batches of 2 are [8.7, 4.3], [4.2]
    clean = {r.key: r.text for r in tr.transcribe(items, DecodingOptions(["attention_rescoring"], 4, batch_size=2))}
    search = Transcriber.prefix_search

    def failing(self, encoded, options, **kwargs):
        if len(encoded.lens) == failing_size:
            raise RuntimeError("injected failure")
        return search(self, encoded, options, **kwargs)

    monkeypatch.setattr(Transcriber, "prefix_search", failing)
    for batch_size, failing_size in ((2, 2), (3, 3)):
        out = list(tr.transcribe(items, DecodingOptions(["attention_rescoring"], 4, batch_size=batch_size)))
        failed = {r.key: r.message for r in out if isinstance(r, Failure)}
        done = {r.key: r.text for r in out if not isinstance(r, Failure)}
        assert len(failed) == failing_size and all("decoding failed: injected failure" in m for m in failed.values())
        assert done == {k: clean[k] for k in clean if k not in failed}


def test_a_wav_cut_after_its_header_was_read_goes_to_libsndfile(tmp_path, random_models):
    from runtime.audio import pcm_wavs, read_audio
    from runtime.transcriber import Transcriber

    tr = Transcriber(random_models["u2pp"][1], "cpu")
    path = str(tmp_path / "a.wav")
    shutil.copy(WAVS[0], path)
    layout = pcm_wavs([path])  # the native reader is built here (the test environment has a C++ compiler)
    with open(path, "rb") as f:
        cut = f.read()[:-1000]
    with open(path, "wb") as f:
        f.write(cut)
    assert tr.read_wavs([(0, path)], layout) == [None]
    upload = tr.native_upload(tr.readers.submit(tr.read_wavs, [(0, path)], layout).result, 0, path)
    assert np.array_equal(upload.samples.numpy(), read_audio(path))


def test_without_the_native_reader_files_go_through_libsndfile(random_models, monkeypatch):
    """Where no C++ compiler builds the WAV reader, the same files give the same transcripts through libsndfile."""
    import runtime.audio
    from runtime.native import NativeBuildError
    from runtime.transcriber import DecodingOptions, Transcriber

    tr = Transcriber(random_models["u2pp"][1], "cpu")
    items = [(os.path.basename(w), w) for w in WAVS]
    options = DecodingOptions(["ctc_greedy_search"], 4, batch_size=len(items))
    native = {r.key: r.result.tokens for r in tr.transcribe(items, options)}

    def no_compiler():
        raise NativeBuildError("no C++ compiler found")

    monkeypatch.setattr(runtime.audio, "_native_reader", no_compiler)
    assert runtime.audio.pcm_wavs([WAVS[0]]) is None
    fallback = {r.key: r.result.tokens for r in tr.transcribe(items, options)}
    assert len(fallback) == len(items) and fallback == native
