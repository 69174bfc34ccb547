"""Transcribe audio files with built engines (default: the demo model's, built on first use).

    python run.py --input_file a.wav
    python run.py --engine_dir engines/u2pp --input_file a.wav b.flac [--modes attention_rescoring]
    python run.py --engine_dir engines/u2pp --wav_scp data/test/wav.scp --results_jsonl out.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from build import DEMO_ENGINE_DIR, DEMO_MODEL_DIR, build_engines, code_fingerprint
from runtime.transcriber import MODES, DecodingOptions, Failure, Transcriber, read_wav_scp


def seconds_since_process_start(fallback_start: float) -> float:
    """Wall time since this process started (imports included), from /proc; elsewhere since ``fallback_start``."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - fallback_start


def demo_engines_outdated(device: str) -> str | None:
    """Why the demo model's engines (a cache of run.py's) must be built again, or None: missing, built by other
    code, or not compiled for the CUDA device asked for."""
    path = os.path.join(DEMO_ENGINE_DIR, "config.json")
    if not os.path.exists(path):
        return "once"
    with open(path, encoding="utf-8") as f:
        builder = json.load(f)["builder"]
    if builder.get("code") != code_fingerprint():
        return "again: they were built by other code"
    if device.startswith("cuda") and builder.get("compiled", {}).get("device") != torch.cuda.get_device_name(device):
        return "again: they were not compiled for this GPU"
    return None


def main(argv: list[str] | None = None) -> int:
    main_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine_dir", default=DEMO_ENGINE_DIR, help="default: the demo model's engines")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input_file", nargs="+", help="audio files; the key is the file name without extension")
    src.add_argument("--wav_scp", help="Kaldi-style 'key path' list")
    p.add_argument("--modes", nargs="+", default=["attention_rescoring"], choices=MODES)
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--ctc_weight", type=float, help="default: the model's model_conf.ctc_weight")
    p.add_argument("--reverse_weight", type=float, help="default: the model's model_conf.reverse_weight")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="on CUDA the compiled engines run where the build made them")
    p.add_argument("--results_jsonl", help="one JSON object per utterance and mode")
    p.add_argument("--verbose", action="store_true",
                   help="timings: start-up, first result, total, and per pipeline stage (each stage waits for the GPU)")
    args = p.parse_args(argv)

    try:
        outdated = demo_engines_outdated(args.device) if args.engine_dir == DEMO_ENGINE_DIR else None
        if outdated:
            print(f"building the demo model's engines into {DEMO_ENGINE_DIR} ({outdated})", file=sys.stderr)
            build_engines(DEMO_MODEL_DIR, DEMO_ENGINE_DIR,
                          compile_device="cuda" if args.device.startswith("cuda") else None)
        items = read_wav_scp(args.wav_scp) if args.wav_scp else \
            [(os.path.splitext(os.path.basename(f))[0], f) for f in args.input_file]
        transcriber = Transcriber(args.engine_dir, args.device)
        options = DecodingOptions(args.modes, args.beam_size, args.ctc_weight, args.reverse_weight, args.batch_size)
        transcriber.check(options)
        transcriber.times.enabled = args.verbose
    except (OSError, ValueError) as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    ready_after, first_result_after = seconds_since_process_start(main_start), None
    failures, results = 0, {mode: [] for mode in args.modes}
    sink = open(args.results_jsonl, "w", encoding="utf-8") if args.results_jsonl else None
    progress = tqdm(total=len(items), unit="file", file=sys.stderr, disable=len(items) < 2 or not sys.stderr.isatty())
    try:
        for out in transcriber.transcribe(items, options):
            if isinstance(out, Failure):
                failures += 1
                progress.update()
                progress.write(f"run.py: error: {out.key}: {out.message}", file=sys.stderr)
                continue
            if first_result_after is None:
                first_result_after = seconds_since_process_start(main_start)
            if out.mode == args.modes[0]:
                progress.update()
            results[out.mode].append(out)
            if sink:
                sink.write(json.dumps(out.to_json(), ensure_ascii=False) + "\n")
    finally:
        progress.close()
        if sink:
            sink.close()
    for mode, mode_results in results.items():
        if len(args.modes) > 1:
            print(f"# {mode}")
        for r in mode_results:
            print(f"{r.key}\t{r.text}")
    done, elapsed = len(items) - failures, time.perf_counter() - start
    audio = transcriber.audio_seconds
    print(f"transcribed {done}/{len(items)} files, {audio:.1f} s of audio, in {elapsed:.2f} s: real-time factor "
          f"{elapsed / max(audio, 1e-9):.4f} ({audio / max(elapsed, 1e-9):.0f}x real time)", file=sys.stderr)
    if args.verbose:
        first = f"{first_result_after:.2f} s" if first_result_after is not None else "none"
        print(f"since process start: engines ready {ready_after:.2f} s, first result {first}", file=sys.stderr)
        print("seconds per stage: " + ", ".join(f"{k} {v:.3f}" for k, v in transcriber.times.seconds.items()),
              file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
