"""summarize.py: data formats, scoring with S/D/I, and the report on real speech."""

import json
import os

import summarize
from tests.conftest import SHARED, sample_flacs


def test_scoring_counts_substitutions_deletions_insertions():
    items = [("a", "", "甚至出现交易几乎停滞的情况"), ("b", "", "设定 二十九度!")]
    run = summarize.SystemRun("x", texts={"m": {"a": "甚至出现交易停滞的情况呀", "b": "设定二十九度"}})
    row, per_utt = summarize.score(run, "m", items, None)
    assert row["metric"] == "CER" and (row["sub"], row["del"], row["ins"]) == (0, 2, 1)
    assert abs(row["error_rate"] - 3 / 19) < 1e-9 and row["ser"] == 0.5
    assert per_utt[1]["ref"] == "设定二十九度" and per_utt[1]["errors"] == {"sub": 0, "del": 0, "ins": 0}
    reference = summarize.SystemRun("ref", hyps={"m": {"a": [1, 2]}}, nbest={"m": {"a": {(1, 2): -1.0, (1,): -2.0}}})
    engine = summarize.SystemRun("x", hyps={"m": {"a": [1, 2]}}, nbest={"m": {"a": {(1, 2): -1.5, (3,): -2.0}}})
    row = summarize.score(engine, "m", items[:1], reference)[0]
    assert row["agreement"] == 1.0 and row["score_diff"] == 0.5  # over the n-best entries both hold
    assert row["differences"] == {}
    reference.nbest["m"]["a"][(4,)] = -3.0
    for tokens, over_engines in (([1], 1.0), ([4], 2.0), ([3], None)):  # the engine's choice outside the n-best: None
        engine.hyps["m"]["a"] = tokens
        row, per_utt = summarize.score(engine, "m", items[:1], reference)
        margins = {"over_engines": over_engines, "top_two": 1.0}
        assert row["agreement"] == 0.0 and row["differences"] == {"a": margins}
        assert per_utt[0]["reference_margins"] == margins
    english = summarize.score(summarize.SystemRun("x", texts={"m": {"c": "the cat sat"}}), "m",
                              [("c", "", "The cat sat down.")], None)[0]
    assert english["metric"] == "WER" and english["del"] == 1 and abs(english["error_rate"] - 0.25) < 1e-9


def test_report_on_real_speech_with_both_systems(tmp_path, random_models, capsys):
    flacs = sample_flacs(3)
    texts = dict(line.split(maxsplit=1) for line in open(os.path.join(SHARED, "aishell_sample", "text"), encoding="utf-8"))
    data = tmp_path / "data"
    data.mkdir()
    keys = [os.path.splitext(os.path.basename(f))[0] for f in flacs]
    (data / "wav.scp").write_text("".join(f"{k} {f}\n" for k, f in zip(keys, flacs)))
    (data / "text").write_text("".join(f"{k} {texts[k]}" for k in keys), encoding="utf-8")
    data_list = tmp_path / "data.list"
    data_list.write_text("".join(json.dumps({"key": k, "wav": f, "txt": texts[k].strip()}) + "\n"
                                 for k, f in zip(keys, flacs)))
    assert summarize.read_data(str(data)) == summarize.read_data(str(data_list))
    result_file = tmp_path / "results.jsonl"
    code = summarize.main(["--engine_dir", random_models["u2pp"][1], "--data", str(data), "--modes",
                           "ctc_greedy_search", "attention_rescoring", "--beam_size", "4", "--device", "cpu",
                           "--result_file", str(result_file)])
    out = capsys.readouterr().out
    assert code == 0 and "3 utterances" in out and "on CPU" in out
    engine_rows = [line for line in out.splitlines() if line.startswith("engine torch float32")]
    assert len(engine_rows) == 2 and all(float(row.split()[-4]) == 100.0 for row in engine_rows)  # agreement column
    assert all(float(row.split()[-3]) < 1e-3 for row in engine_rows)  # fp32 engines score as the reference does
    records = [json.loads(line) for line in result_file.read_text().splitlines()]
    assert len(records) == 12 and {r["key"] for r in records} == set(keys)
