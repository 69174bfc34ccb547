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

from build import DEMO_ENGINE_DIR, DEMO_MODEL_DIR, build_engines
from runtime.transcriber import MODES, DecodingOptions, Failure, Transcriber, read_wav_scp


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--device", default="cpu")
    p.add_argument("--results_jsonl", help="one JSON object per utterance and mode")
    args = p.parse_args(argv)

    try:
        if args.engine_dir == DEMO_ENGINE_DIR and not os.path.exists(os.path.join(DEMO_ENGINE_DIR, "config.json")):
            print(f"building the demo model's engines into {DEMO_ENGINE_DIR} (once)", file=sys.stderr)
            build_engines(DEMO_MODEL_DIR, DEMO_ENGINE_DIR)
        items = read_wav_scp(args.wav_scp) if args.wav_scp else \
            [(os.path.splitext(os.path.basename(f))[0], f) for f in args.input_file]
        transcriber = Transcriber(args.engine_dir, args.device)
        options = DecodingOptions(args.modes, args.beam_size, args.ctc_weight, args.reverse_weight, args.batch_size)
        transcriber.check(options)
    except (OSError, ValueError) as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    failures, results = 0, {mode: [] for mode in args.modes}
    sink = open(args.results_jsonl, "w", encoding="utf-8") if args.results_jsonl else None
    try:
        for out in transcriber.transcribe(items, options):
            if isinstance(out, Failure):
                failures += 1
                print(f"run.py: error: {out.key}: {out.message}", file=sys.stderr)
                continue
            results[out.mode].append(out)
            if sink:
                sink.write(json.dumps(out.to_json(), ensure_ascii=False) + "\n")
    finally:
        if sink:
            sink.close()
    for mode, mode_results in results.items():
        if len(args.modes) > 1:
            print(f"# {mode}")
        for r in mode_results:
            print(f"{r.key}\t{r.text}")
    done = len(items) - failures
    print(f"transcribed {done}/{len(items)} files in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
