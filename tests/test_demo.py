"""The demo recipe (data preparation, one training step) and the shipped demo model's transcripts."""

import json
import os
import subprocess

import pytest
import soundfile

import examples.aishell_demo
from build import DEMO_MODEL_DIR, build_engines
from examples.aishell_demo.prepare import prepare, split_sample, synthesize_plan
from examples.aishell_demo.train import train
from runtime.transcriber import DecodingOptions, Transcriber
from tests.conftest import SHARED

UNSEEN = {  # test-part utterances the model never trained on: its actual output, checked for regressions
    "BAC009S0150W0171": ("已经成为当前房地产市场的解盘下", "已经成为当前房地产市场的接盘侠"),
    "BAC009S0150W0180": ("只撑房地产的当西在市需位所", "只撑房地产的当西在市需位所"),
}
UNSEEN_TEXT = "已经成为当前房地产市场的接盘侠"  # BAC009S0150W0171's transcript


def test_split_keeps_the_test_part_unseen():
    parts = split_sample(SHARED)
    keys = {part: {k for k, _, _ in items} for part, items in parts.items()}
    assert not keys["test"] & (keys["train"] | keys["dev"]) and not keys["dev"] & keys["train"]
    assert len(keys["test"]) == 99 and {k[6:11] for k in keys["test"]} == {"S0150", "S0252"}
    assert set(UNSEEN) <= keys["test"]


def test_recipe_prepares_data_and_trains_a_step(tmp_path):
    if not any(os.access(os.path.join(d, "espeak-ng"), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)):
        pytest.fail("espeak-ng is required (apt-get install espeak-ng); .ci/run installs it")
    corpus = tmp_path / "corpus.conllu"  # CoNLL-U: only "# text =" lines count; clauses with digits are dropped
    corpus.write_text("# sent_id = s1\n# text = 杜鹃花为温带植物，台北虽然在亚热带。\n1\t杜鹃花\t_\n\n"
                      "# text = 怀孕期为421至457日。\n\n"
                      f"# text = 他说{UNSEEN_TEXT}。\n", encoding="utf-8")  # a test transcript: held out
    old = tmp_path / "old.conllu"  # traditional script without "# text =" lines (UD_Chinese-GSD's 2017 files)
    old.write_text("1\t雖然\t_\n2\t美國\t_\n3\t的\t_\n4\t許多\t_\n5\t數字化\t_\n\n", encoding="utf-8")
    data = tmp_path / "data"
    counts = prepare(SHARED, str(data), synthetic=7, max_real=8, corpus=[str(corpus)], traditional_corpus=[str(old)],
                     synthetic_format="flac", defer_synthesis=True)
    assert counts == {"train": 8, "synthetic": 7, "dev": 8, "test": 99}
    synthetic = dict(line.split() for line in (data / "synthetic" / "text").read_text(encoding="utf-8").splitlines())
    assert len(synthetic) == 7
    assert set(list(synthetic.values())[:3]) == {"杜鹃花为温带植物", "台北虽然在亚热带", "虽然美国的许多数字化"}
    assert not any(text.startswith("怀孕") or UNSEEN_TEXT in text for text in synthetic.values())
    assert not any((data / "audio" / f"{key}.flac").exists() for key in synthetic)  # planned, not yet synthesized
    assert synthesize_plan(str(data), jobs=2) == 7
    for key, text in synthetic.items():
        samples, rate = soundfile.read(data / "audio" / f"{key}.flac")
        assert rate == 16000 and 0.15 * len(text) < len(samples) / rate < 0.5 * len(text) + 1
    summary = train(str(tmp_path / "data"), str(tmp_path / "exp"), minutes=5, device="cpu", tiny=True, max_steps=1,
                    workers=1)
    assert summary["steps"] == 1
    model_dir = tmp_path / "exp"
    assert {"final.pt", "train.yaml", "global_cmvn", "units.txt"} <= set(os.listdir(model_dir))
    build_engines(str(model_dir), str(tmp_path / "engine"))  # a standard WeNet model dir our build reads
    assert json.load(open(tmp_path / "engine" / "config.json"))["model"]["wenet"]["sos"] == 2


def test_espeak_bundle_speaks_as_the_installed_program(tmp_path):
    """The copy that carries the synthesis to a machine without espeak-ng speaks the same bytes, from its own data."""
    bundle = tmp_path / "espeak"
    subprocess.run([os.path.join(os.path.dirname(examples.aishell_demo.__file__), "espeak_bundle.sh"), str(bundle)],
                   check=True, capture_output=True)
    args = ["-v", "cmn-latn-pinyin+f2", "-s", "150", "-p", "40", "--stdout", "ni3 hao3 shi4 jie4"]
    copy = subprocess.run([str(bundle / "espeak-ng"), *args], check=True, capture_output=True, env={}).stdout
    assert len(copy) > 10000 and copy == subprocess.run(["espeak-ng", *args], check=True, capture_output=True).stdout
    (bundle / "espeak-ng-data" / "phontab").unlink()  # the installed data must not stand in for the copy's
    assert not subprocess.run([str(bundle / "espeak-ng"), *args], capture_output=True, env={}).stdout


def test_shipped_model_transcribes_unseen_speech(tmp_path):
    size = sum(os.path.getsize(os.path.join(DEMO_MODEL_DIR, f)) for f in os.listdir(DEMO_MODEL_DIR))
    assert size <= 40e6
    build_engines(DEMO_MODEL_DIR, str(tmp_path / "engine"))
    transcriber = Transcriber(str(tmp_path / "engine"))
    items = [(k, os.path.join(SHARED, "aishell_sample", "flac", f"{k}.flac")) for k in UNSEEN]
    results = {(r.key, r.mode): r.text for r in transcriber.transcribe(
        items, DecodingOptions(["ctc_greedy_search", "attention_rescoring"], 10))}
    for key, (greedy, rescoring) in UNSEEN.items():
        assert results[(key, "ctc_greedy_search")] == greedy
        assert results[(key, "attention_rescoring")] == rescoring
