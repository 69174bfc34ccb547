"""Accuracy and speed of WeNet's PyTorch model (reference.py) against built engines on a labelled set.

    python summarize.py --engine_dir engines/u2pp --data ../shared/data/aishell_sample [--test_torch] [--test_engine]

DATA is a Kaldi-style dir (``wav.scp`` + ``text``) or a WeNet ``data.list`` (JSON lines with key, wav, txt).
Prints one table: per system and decoding mode, CER (Mandarin) or WER (otherwise) with substitutions, deletions and
insertions, sentence error rate, token agreement with the reference, the mean score difference from the reference
over the n-best entries both hold (how far the engine's numerics are from fp32, finer than agreement on a small set),
audio seconds, wall time and real-time factor; then each utterance whose engine tokens differ from the reference's,
with the margin by which the reference prefers its own hypothesis (a near-tie where it is below the engine's score
difference; a search that parted at a beam's edge earlier where it is large); writes per-utterance results (ref, hyp,
errors, and for the engines the margins where they differ) to ``--result_file``. Without --test_torch/--test_engine,
both run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field

import jiwer
import torch

from runtime.audio import AudioError, duration, load_audio
from runtime.frontend import fbank
from runtime.search import DecodeResult
from runtime.transcriber import MODES, DecodingOptions, Failure, Transcriber, read_wav_scp, tokens_to_text

CJK = re.compile(r"[\u3400-\u9fff]")


def read_data(path: str) -> list[tuple[str, str, str]]:
    """(key, audio path, transcript) from a Kaldi-style dir or a WeNet data.list."""
    if os.path.isdir(path):
        wavs = dict(read_wav_scp(os.path.join(path, "wav.scp")))
        with open(os.path.join(path, "text"), encoding="utf-8") as f:
            texts = dict(line.rstrip("\n").split(maxsplit=1) for line in f if len(line.split(maxsplit=1)) == 2)
        return [(k, wavs[k], texts[k]) for k in wavs if k in texts]
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                items.append((d["key"], d["wav"], d["txt"]))
    return items


def normalize(text: str, cjk: bool) -> str:
    """CER: characters without spaces and punctuation; WER: upper-cased words."""
    if cjk:
        return "".join(ch for ch in text if ch.isalnum()).upper()
    return " ".join(re.sub(r"[^\w' ]", " ", text.upper()).split())


@dataclass
class SystemRun:
    name: str
    hyps: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # mode -> key -> tokens
    texts: dict[str, dict[str, str]] = field(default_factory=dict)
    nbest: dict[str, dict[str, dict[tuple[int, ...], float]]] = field(default_factory=dict)  # mode -> key -> scores
    seconds: float = 0.0
    failures: int = 0

    def add(self, mode: str, key: str, result: DecodeResult, text: str) -> None:
        self.hyps.setdefault(mode, {})[key] = result.tokens
        self.texts.setdefault(mode, {})[key] = text
        self.nbest.setdefault(mode, {})[key] = {tuple(h): s for h, s in zip(result.nbest, result.nbest_scores)}


def run_reference(model_dir: str, items, options: DecodingOptions, vocab: list[str], device: str) -> SystemRun:
    from core.dtype import fp32_exact
    from models.wenet.reference import ReferenceModel
    from weights.files import read_model_dir

    ckpt = read_model_dir(model_dir)
    model = ReferenceModel(ckpt.config)
    model.load_checkpoint(ckpt.state, ckpt.cmvn)
    model.to(device)
    config = ckpt.config
    ctc_weight, reverse_weight = options.weights(config)
    run = SystemRun("reference.py fp32")
    start = time.perf_counter()
    for key, wav, _ in items:
        try:
            feats = fbank(load_audio(wav, config.sample_rate), config.num_mel_bins).to(device)
        except AudioError:
            run.failures += 1
            continue
        with fp32_exact():
            results = model.decode(options.modes, feats[None], torch.tensor([feats.shape[0]], device=device),
                                   options.beam_size, ctc_weight, reverse_weight)
        for mode, r in results.items():
            run.add(mode, key, r[0], tokens_to_text(r[0].tokens, vocab))
    run.seconds = time.perf_counter() - start
    return run


def run_engine(transcriber: Transcriber, items, options: DecodingOptions) -> SystemRun:
    builder = transcriber.engine.config["builder"]
    run = SystemRun(f"engine {builder['backend']} {builder['dtype']}")
    start = time.perf_counter()
    for out in transcriber.transcribe([(k, w) for k, w, _ in items], options):
        if isinstance(out, Failure):
            run.failures += 1
            continue
        run.add(out.mode, out.key, out.result, out.text)
    if transcriber.engine.device.type == "cuda":
        torch.cuda.synchronize()
    run.seconds = time.perf_counter() - start
    return run


def score(run: SystemRun, mode: str, items, reference: SystemRun | None) -> tuple[dict, list[dict]]:
    keys = [k for k, _, _ in items]
    refs_raw = {k: t for k, _, t in items}
    cjk = any(CJK.search(t) for t in refs_raw.values())
    refs = [normalize(refs_raw[k], cjk) for k in keys]
    hyps = [normalize(run.texts.get(mode, {}).get(k, ""), cjk) for k in keys]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]  # an empty reference has no error rate
    measure = jiwer.process_characters if cjk else jiwer.process_words
    out = measure([r for r, _ in pairs], [h for _, h in pairs])
    total = out.substitutions + out.deletions + out.hits
    row = {"system": run.name, "mode": mode, "metric": "CER" if cjk else "WER",
           "error_rate": (out.substitutions + out.deletions + out.insertions) / max(total, 1),
           "sub": out.substitutions, "del": out.deletions, "ins": out.insertions,
           "ser": sum(r != h for r, h in pairs) / max(len(pairs), 1), "failed": run.failures}
    if reference is not None and reference is not run and mode in reference.hyps:
        both = [k for k in keys if k in reference.hyps[mode] and k in run.hyps.get(mode, {})]
        row["agreement"] = sum(run.hyps[mode][k] == reference.hyps[mode][k] for k in both) / max(len(both), 1)
        diffs = [abs(score - reference.nbest[mode][k][h]) for k in both for h, score in run.nbest[mode][k].items()
                 if h in reference.nbest[mode][k]]
        row["score_diff"] = sum(diffs) / len(diffs) if diffs else float("nan")
        row["differences"] = {k: reference_margins(reference.nbest[mode][k], reference.hyps[mode][k], run.hyps[mode][k])
                              for k in both if run.hyps[mode][k] != reference.hyps[mode][k]}
    per_utt = []
    for k, r, h in zip(keys, refs, hyps):
        one = measure(r, h) if r else None
        per_utt.append({"key": k, "system": run.name, "mode": mode, "ref": r, "hyp": h,
                        "errors": None if one is None else
                        {"sub": one.substitutions, "del": one.deletions, "ins": one.insertions}})
        if k in row.get("differences", {}):
            per_utt[-1]["reference_margins"] = row["differences"][k]
    return row, per_utt


def reference_margins(nbest: dict[tuple[int, ...], float], reference_tokens: list[int],
                      engine_tokens: list[int]) -> dict:
    """Where an engine's tokens differ from the reference's, from the reference's n-best scores: by how much it
    prefers its hypothesis to the engine's (None where the engine's is not in its n-best, lost earlier in its search)
    and how far apart its own best two are."""
    best = sorted(nbest.values(), reverse=True)
    engines = nbest.get(tuple(engine_tokens))
    return {"over_engines": None if engines is None else nbest[tuple(reference_tokens)] - engines,
            "top_two": best[0] - best[1] if len(best) > 1 else None}


def _duration(path: str) -> float:
    """Seconds of audio from the file's header (0 for an unreadable file)."""
    try:
        return duration(path)
    except AudioError:
        return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine_dir", required=True)
    p.add_argument("--data", required=True, help="Kaldi-style dir (wav.scp + text) or WeNet data.list")
    p.add_argument("--test_torch", action="store_true", help="decode with reference.py (fp32)")
    p.add_argument("--test_engine", action="store_true", help="decode with the engines")
    p.add_argument("--model_dir", help="model dir for reference.py (default: the one the engines were built from)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--ctc_weight", type=float)
    p.add_argument("--reverse_weight", type=float)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max_utts", type=int, help="only the first N utterances")
    p.add_argument("--result_file", default="summarize_results.jsonl")
    args = p.parse_args(argv)
    test_torch = args.test_torch or not args.test_engine
    test_engine = args.test_engine or not args.test_torch

    items = read_data(args.data)[:args.max_utts]
    transcriber = Transcriber(args.engine_dir, args.device)
    options = DecodingOptions(args.modes, args.beam_size, args.ctc_weight, args.reverse_weight, args.batch_size)
    transcriber.check(options)
    audio_seconds = sum(_duration(w) for _, w, _ in items)
    runs = []
    if test_torch:
        model_dir = args.model_dir or os.path.dirname(transcriber.engine.config["model"]["checkpoint"])
        runs.append(run_reference(model_dir, items, options, transcriber.engine.vocab, args.device))
    if test_engine:
        runs.append(run_engine(transcriber, items, options))
    reference = runs[0] if test_torch else None
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{len(items)} utterances, {audio_seconds:.1f} s of audio, on {device}")
    print(f"{'system':28s} {'mode':24s} {'err %':>7s} {'sub':>5s} {'del':>5s} {'ins':>5s} {'SER %':>6s} "
          f"{'agree %':>7s} {'score Δ':>8s} {'wall s':>7s} {'RTF':>8s}")
    differences = []
    with open(args.result_file, "w", encoding="utf-8") as f:
        for run in runs:
            for mode in args.modes:
                row, per_utt = score(run, mode, items, reference)
                agree = f"{100 * row['agreement']:7.2f}" if "agreement" in row else f"{'-':>7s}"
                diff = f"{row['score_diff']:8.1e}" if "score_diff" in row else f"{'-':>8s}"
                print(f"{run.name:28s} {mode:24s} {100 * row['error_rate']:7.2f} {row['sub']:5d} {row['del']:5d} "
                      f"{row['ins']:5d} {100 * row['ser']:6.2f} {agree} {diff} {run.seconds:7.2f} "
                      f"{run.seconds / max(audio_seconds, 1e-9):8.4f}")
                for u in per_utt:
                    f.write(json.dumps(u, ensure_ascii=False) + "\n")
                differences += [(run.name, mode, k, m) for k, m in row.get("differences", {}).items()]
            if run.failures:
                print(f"  {run.name}: {run.failures} utterance(s) could not be decoded", file=sys.stderr)
    if differences:
        print("where the engine's tokens differ from reference.py's, the reference's score of its hypothesis minus its "
              "score of the engine's:\nsmall, a near-tie of the final choice; large, or the engine's outside the "
              "reference's n-best, the two searches parted earlier, at a beam's edge")
    for name, mode, key, m in differences:
        over = "the engine's is not in its n-best" if m["over_engines"] is None else f"{m['over_engines']:.1e} over the engine's"
        top = "" if m["top_two"] is None else f"; its best two {m['top_two']:.1e} apart"
        print(f"  {name:28s} {mode:24s} {key}: {over}{top}")
    print(f"per-utterance results: {args.result_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
