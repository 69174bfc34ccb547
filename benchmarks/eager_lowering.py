"""The eager PyTorch lowering on a GPU: correctness against the reference and CPU, and its speed.

    python benchmarks/eager_lowering.py [--device cuda] [--out results.json]

For both AISHELL-1 recipes at real size (random weights): fp32 and fp16 engines on the device
against reference.py fp32 (encoder error, agreement of greedy and rescoring tokens on real wavs),
and timings (CUDA events, median) of encoder+CTC at batch 1 and 16 for 10 s of audio and of
rescoring 10 hypotheses of 20 tokens at batch 1, next to reference.py eager fp32. Where
torchaudio is present it also checks our fbank against torchaudio.compliance.kaldi.fbank.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from build import build_engines  # noqa: E402
from models.wenet.networks import Profiles  # noqa: E402
from models.wenet.reference import ReferenceModel  # noqa: E402
from runtime.audio import load_audio  # noqa: E402
from runtime.frontend import fbank  # noqa: E402
from runtime.search import DecodeResult, NBest  # noqa: E402
from runtime.transcriber import DecodingOptions, Transcriber  # noqa: E402
from tools.make_random_model import SHARED, make_random_model  # noqa: E402
from weights.files import read_model_dir  # noqa: E402


def cuda_time(fn, *args, warmup: int = 3, repeat: int = 20) -> float:
    """Median milliseconds of ``fn(*args)`` (device events; host clock on the CPU)."""
    for _ in range(warmup):
        fn(*args)
    if not torch.cuda.is_available():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_fbank(wavs: list[str]) -> float | None:
    try:
        from torchaudio.compliance import kaldi
    except ImportError:
        return None
    worst = 0.0
    for w in wavs:
        samples = torch.from_numpy(load_audio(w))
        ref = kaldi.fbank(samples[None], num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0,
                          energy_floor=0.0, sample_frequency=16000)
        worst = max(worst, float((fbank(samples) - ref).abs().max()))
    return worst


FRAMES_10S = 998


def measure_engine(engine_dir: str, device: str, feats: list[torch.Tensor], ref_results: list, ref_enc: list,
                   reverse_weight: float) -> dict:
    modes = ["ctc_greedy_search", "attention_rescoring"]
    tr = Transcriber(engine_dir, device)
    out = tr.decode(feats, DecodingOptions(modes, 10, 0.5, reverse_weight, len(feats)))
    enc = tr.encoding.encode(feats)
    err = max(float((enc.encoder_out[i, :r.shape[0]].float().cpu() - r).abs().max()) for i, r in enumerate(ref_enc))
    session = tr.encoding.session
    batch16 = {"speech": torch.randn(16, FRAMES_10S, 80, device=device) + 10,
               "speech_lengths": torch.full((16,), FRAMES_10S, dtype=torch.int32, device=device)}
    batch1 = {k: v[:1] for k, v in batch16.items()}
    enc1 = tr.encoding.encode([feats[0]])
    hyps = [list(range(3 + k, 23 + k)) for k in range(10)]
    prefix = NBest.from_results([DecodeResult(hyps[0], 0.0, hyps, [-float(k) for k in range(10)])])
    return {"encoder_max_abs_err_vs_ref_fp32": err, "utterances": len(feats),
            **{key: sum(out[m][i].tokens == ref_results[i][m][0].tokens for i in range(len(feats)))
               for key, m in (("agree_greedy", modes[0]), ("agree_rescoring", modes[1]))},
            "enc_b1_10s_ms": cuda_time(lambda: session.run(batch1)),
            "enc_b16_10s_ms": cuda_time(lambda: session.run(batch16)),
            "rescore_b1_10x20_ms": cuda_time(lambda: tr.decoding.rescore(prefix, enc1.encoder_out, enc1.encoder_lens, 0.5,
                                                                                  reverse_weight))}


def measure_recipe(recipe: str, root: str, feats: list[torch.Tensor], device: str) -> list[dict]:
    model_dir = make_random_model(recipe, os.path.join(root, recipe))
    ckpt = read_model_dir(model_dir)
    reference = ReferenceModel(ckpt.config)
    reference.load_checkpoint(ckpt.state, ckpt.cmvn)
    rw = ckpt.config.reverse_weight
    modes = ["ctc_greedy_search", "attention_rescoring"]
    ref_results = [reference.decode(modes, f[None], torch.tensor([f.shape[0]]), 10, 0.5, rw) for f in feats]
    ref_enc = [reference.encode(f[None], torch.tensor([f.shape[0]]))[0][0] for f in feats]
    reference.to(device)
    x1 = torch.randn(1, FRAMES_10S, 80, device=device) + 10
    l1 = torch.tensor([FRAMES_10S], device=device)
    with torch.no_grad():
        ref_ms = cuda_time(lambda: reference.encode(x1, l1))
    rows = []
    for dtype in ("float32", "float16"):
        engine_dir = os.path.join(root, f"{recipe}_{dtype}")
        build_engines(model_dir, engine_dir, dtype, Profiles(max_batch_size=16, max_seconds=20))
        row = {"recipe": recipe, "dtype": dtype, "ref_eager_fp32_enc_b1_10s_ms": ref_ms,
               **measure_engine(engine_dir, device, feats, ref_results, ref_enc, rw)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out")
    args = p.parse_args()
    data = os.path.dirname(SHARED)
    wavs = sorted(glob.glob(os.path.join(data, "wavs", "*.wav"))) + \
        sorted(glob.glob(os.path.join(data, "aishell_sample", "flac", "*.flac")))[:13]
    report: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__, "fbank_vs_torchaudio_max_abs": check_fbank(wavs)}
    feats = [fbank(load_audio(w)) for w in wavs]
    root = tempfile.mkdtemp()
    report["rows"] = [row for recipe in ("conformer", "u2pp") for row in measure_recipe(recipe, root, feats, args.device)]
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    print(f"{'recipe':10s} {'dtype':8s} {'enc err':>9s} {'greedy':>7s} {'rescore':>7s} {'ref b1':>8s} "
          f"{'enc b1':>8s} {'enc b16':>8s} {'resc b1':>8s}")
    for r in report["rows"]:
        print(f"{r['recipe']:10s} {r['dtype']:8s} {r['encoder_max_abs_err_vs_ref_fp32']:9.2e} "
              f"{r['agree_greedy']:3d}/{r['utterances']:<3d} {r['agree_rescoring']:3d}/{r['utterances']:<3d} "
              f"{r['ref_eager_fp32_enc_b1_10s_ms']:8.2f} {r['enc_b1_10s_ms']:8.2f} {r['enc_b16_10s_ms']:8.2f} "
              f"{r['rescore_b1_10x20_ms']:8.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
