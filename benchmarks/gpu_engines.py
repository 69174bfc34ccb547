"""Speed of the compiled GPU engines against WeNet's PyTorch model (``reference.py``), one process.

    python benchmarks/gpu_engines.py [--recipes conformer u2pp] [--parts kernels profile e2e latency agreement]
        [--utterances 1000] [--dtypes float16 bfloat16] [--reference_parts kernels e2e] [--seconds 5 10 20]
        [--batches 1 16 64] [--hyp_tokens 20] [--program_batches 1] [--out DIR]

For each AISHELL-1 recipe at real size (random weights), on one CUDA GPU:
- encoder+CTC time for batch 1, 16, 64 at 5, 10, 20 s of audio (or the ``--batches`` x ``--seconds`` given),
  and rescoring time (10 hypotheses of 20 tokens per utterance, on the device before the timed call, as the prefix
  search leaves them; cross-attention K/V included; ours also from the n-best on the host) at the same shapes,
  for: reference.py eager fp32 and fp16, ``torch.compile(mode="reduce-overhead")`` of reference.py in fp16 (static,
  compiled for each shape), and our compiled engines in fp16 and bf16 (CUDA events, median of 20 after warm-up),
  built for batches up to 64 with a program for batch 1 and one for 2-64 (``--program_batches``, as build.py's);
- each row's floor: the larger of FLOPs (counted on the reference by torch's FlopCounterMode) over
  the measured matmul peak, and the fewest bytes (weights once, inputs and outputs once) over the
  measured device copy bandwidth; and the fraction of the floor reached;
- ``profile``: where the encoder+CTC and the rescoring time of our first engine build go, per kernel
  (``torch.profiler`` over one call at each ``--batches`` x ``--seconds`` shape; the encoder's is a CUDA-graph
  replay), grouped into GEMMs, convolutions, our plugins' kernels and Inductor's generated kernels;
- end-to-end throughput, audio files in and text out (reading, fbank, encoder, CTC prefix beam
  search, rescoring), over ``--utterances`` files of mixed length made from the real wavs. The
  reference's pipeline uses the same file reading, fbank and native prefix search as ours, so
  the comparison isolates the models: WeNet's model rescoring each utterance's n-best in one
  decoder call per direction, as WeNet's ``attention_rescoring`` does;
- ``latency``: batch 1, one 10 s file of real speech, path in and text out, with its stages;
- agreement of the fp16/bf16 engines' greedy and rescoring tokens with reference.py fp32 on every
  real wav, counting only utterances whose reference top-two candidates differ by more than 1e-3.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np
import soundfile
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.eager_lowering import cuda_time  # noqa: E402
from benchmarks.report import report_markdown  # noqa: E402
from build import build_engines  # noqa: E402
from core.compiled import plugins_digest  # noqa: E402
from core.dtype import fp32_exact  # noqa: E402
from models.wenet.networks import Profiles, seconds_to_frames  # noqa: E402
from models.wenet.reference import ReferenceModel  # noqa: E402
from runtime.audio import load_audio  # noqa: E402
from runtime.frontend import fbank  # noqa: E402
from runtime.search import NBEST_ARRAYS, DecodeResult, NBest, ctc_prefix_beam_search  # noqa: E402
from runtime.transcriber import DecodingOptions, Transcriber  # noqa: E402
from tools.make_random_model import SHARED, make_random_model  # noqa: E402
from weights.files import read_model_dir  # noqa: E402

DATA = os.path.dirname(SHARED)  # the shared data dir (SHARED is its aishell1 assets)
BATCHES = (1, 16, 64)
SECONDS = (5, 10, 20)
HYPS, HYP_TOKENS = 10, 20
E2E_PASSES = 3  # timed passes of the 1,000 files after the warm-up; the median is reported


def ceilings() -> dict:
    """Measured matmul peak (TFLOP/s per dtype, 8192^3) and copy bandwidth (GB/s, read + write)."""
    out = {}
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        ms = cuda_time(torch.matmul, a, b, repeat=10)  # fp32 without TF32 (torch's default)
        out[f"matmul_tflops_{str(dtype)[6:]}"] = 2 * 8192**3 / ms / 1e9
    x = torch.randn(256 << 20, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    ms = cuda_time(y.copy_, x, repeat=10)
    out["copy_gbps"] = 2 * x.numel() * 4 / ms / 1e6
    return out


def count_flops(fn, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def encoder_inputs(batch: int, seconds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of fbank-like features (B, frames, 80) of ``seconds`` and their lengths, on the GPU."""
    frames = seconds_to_frames(seconds)
    g = torch.Generator().manual_seed(batch * 100 + seconds)
    return (torch.randn(batch, frames, 80, generator=g) + 10).cuda(), \
        torch.full((batch,), frames, dtype=torch.int32, device="cuda")


def hypotheses(batch: int, vocab: int, seed: int, tokens: int = HYP_TOKENS) -> list[DecodeResult]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        nbest = [torch.randint(3, vocab - 1, (tokens,), generator=g).tolist() for _ in range(HYPS)]
        out.append(DecodeResult(nbest[0], 0.0, nbest, [-float(i) for i in range(HYPS)]))
    return out


def reference_rescoring_inputs(ref: ReferenceModel, prefix: list[DecodeResult], memory: torch.Tensor,
                               memory_lens: torch.Tensor):
    """WeNet's attention_rescoring tensors for a batch: memory repeated per hypothesis."""
    n = len(prefix[0].nbest)
    hyps = torch.tensor([h for p in prefix for h in p.nbest], device=memory.device)
    sos = torch.full((hyps.shape[0], 1), ref.sos, device=memory.device)
    ys_in, r_ys_in = torch.cat([sos, hyps], 1), torch.cat([sos, hyps.flip(1)], 1)
    lens = torch.full((hyps.shape[0],), hyps.shape[1] + 1, device=memory.device)
    mem = memory.repeat_interleave(n, 0)
    mask = (torch.arange(mem.shape[1], device=memory.device)[None] < memory_lens.repeat_interleave(n)[:, None])[:, None]
    return mem, mask, ys_in, r_ys_in, lens


def rescore(tr: Transcriber, nbest: NBest, enc) -> list[DecodeResult]:
    """Our rescoring of a batch from an n-best on the host: its tries built there, all hypotheses in one decoder call
    (cross-attention K/V inside), the ranked results."""
    return tr.decoding.rescore(nbest, enc.encoder_out, enc.encoder_lens, 0.5, 0.3)


def device_nbest(nbest: NBest) -> tuple[torch.Tensor, ...]:
    """An n-best's arrays on the GPU, as the prefix search leaves them there."""
    return tuple(torch.from_numpy(getattr(nbest, name)).cuda() for name in NBEST_ARRAYS)


def rescore_on_device(tr: Transcriber, nbest: NBest, on_device: tuple[torch.Tensor, ...], enc) -> list[DecodeResult]:
    """Our rescoring of a batch decoded alone, from its n-best on the GPU (as the prefix search leaves it, and as the
    reference's timed call gets its hypotheses): chain tries and decoder as one CUDA graph, the ranked results."""
    return tr.decoding.on_device(nbest, on_device, enc.encoder_out, enc.encoder_lens, 0.5, 0.3).results()


def reference_rescore(ref: ReferenceModel, mem, mask, ys_in, r_ys_in, lens):
    left, right = ref._left_right()
    out = torch.log_softmax(left(mem, mask, ys_in, lens), -1)
    r_out = torch.log_softmax(right(mem, mask, r_ys_in, lens), -1) if right is not None else None
    return out, r_out


def kernel_rows(recipe: str, model_dir: str, engines: dict[str, str], peaks: dict, with_reference: bool = True,
                seconds_list: tuple[int, ...] = SECONDS, batches: tuple[int, ...] = BATCHES) -> list[dict]:
    ckpt = read_model_dir(model_dir)
    vocab = ckpt.config.vocab_size
    refs = {}
    for name, dtype in (("reference eager fp32", torch.float32), ("reference eager fp16", torch.float16)):
        ref = ReferenceModel(ckpt.config)
        ref.load_checkpoint(ckpt.state, ckpt.cmvn)
        refs[name] = ref.to("cuda", dtype)
    compiled_ref = refs["reference eager fp16"]
    # Static shapes, a compilation per shape of the matrix, as one compiles for the shape one serves. With torch's
    # automatic dynamic shapes the second shape met recompiles for symbolic sizes, and every later shape runs that
    # slower graph (u2pp, b64 x 10 s: 11.09 ms against 9.53 compiled for that shape alone; H200, session 27).
    # Dynamo keeps each function's graphs under one limit (8 by default, beyond which it runs eagerly): here a graph
    # per shape, with room for the recompiles a shape's first calls may add.
    shapes = len(seconds_list) * len(batches)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * shapes)
    compiled = {"encode": torch.compile(lambda s, n: compiled_ref.encode(s, n)[:3], mode="reduce-overhead",
                                        dynamic=False),
                "rescore": torch.compile(lambda *a: reference_rescore(compiled_ref, *a), mode="reduce-overhead",
                                         dynamic=False)}
    ours = {name: Transcriber(path, "cuda") for name, path in engines.items()}
    weight_bytes = {"float32": 4, "float16": 2, "bfloat16": 2}
    n_params = sum(p.numel() for p in refs["reference eager fp32"].parameters())
    n_encoder = sum(p.numel() for p in refs["reference eager fp32"].encoder.parameters()) + \
        sum(p.numel() for p in refs["reference eager fp32"].ctc.parameters())
    rows = []
    for seconds in seconds_list:
        for batch in batches:
            speech, lens = encoder_inputs(batch, seconds)
            prefix = hypotheses(batch, vocab, seconds)
            ref32 = refs["reference eager fp32"]
            with torch.no_grad():
                enc_out, enc_lens, _, _ = ref32.encode(speech, lens)
                enc_flops = count_flops(ref32.encode, speech, lens)
                resc_flops = count_flops(reference_rescore, ref32,
                                         *reference_rescoring_inputs(ref32, prefix, enc_out, enc_lens))
            t_out = enc_out.shape[1]
            references = ("reference eager fp32", "reference eager fp16", "reference compiled fp16")
            systems = (*(references if with_reference else ()), *ours)
            for system in systems:
                dtype_name = "float32" if system.endswith("fp32") else ("bfloat16" if "bf16" in system else "float16")
                host_nbest_ms = None  # ours: the rescoring from the n-best on the host as well
                with torch.no_grad():
                    if system.startswith("reference"):
                        ref = refs.get(system, compiled_ref)
                        x = speech.to(next(ref.parameters()).dtype)
                        mem, mem_lens, _, _ = ref.encode(x, lens)
                        resc_in = reference_rescoring_inputs(ref, prefix, mem, mem_lens)
                        if system == "reference compiled fp16":
                            enc_ms = cuda_time(compiled["encode"], x, lens)
                            resc_ms = cuda_time(compiled["rescore"], *resc_in)
                        else:
                            enc_ms = cuda_time(ref.encode, x, lens)
                            resc_ms = cuda_time(reference_rescore, ref, *resc_in)
                    else:
                        tr = ours[system]
                        session = tr.encoding.session
                        inputs = {"speech": speech, "speech_lengths": lens}
                        enc_ms = cuda_time(session.run, inputs)
                        enc = tr.encoding.encode([speech[i].cpu() for i in range(batch)])
                        nbest = NBest.from_results(prefix)
                        on_device = device_nbest(nbest)
                        resc_ms = cuda_time(rescore_on_device, tr, nbest, on_device, enc)
                        host_nbest_ms = cuda_time(rescore, tr, nbest, enc)
                wb = weight_bytes[dtype_name]
                enc_bytes = n_encoder * wb + speech.numel() * 4 + batch * t_out * (vocab * 4 + ckpt.config.d_model * wb)
                resc_bytes = (n_params - n_encoder) * wb + batch * t_out * ckpt.config.d_model * wb
                peak = peaks[f"matmul_tflops_{dtype_name}"] * 1e9  # FLOP per ms
                for stage, ms, flops, nbytes in (("encoder+ctc", enc_ms, enc_flops, enc_bytes),
                                                 ("rescoring", resc_ms, resc_flops, resc_bytes)):
                    floor = max(flops / peak, nbytes / (peaks["copy_gbps"] * 1e6))
                    rows.append({"recipe": recipe, "stage": stage, "system": system, "batch": batch,
                                 "seconds": seconds, "ms": ms, "gflop": flops / 1e9, "mbytes": nbytes / 1e6,
                                 "floor_ms": floor, "fraction_of_floor": floor / ms})
                if host_nbest_ms is not None:
                    rows[-1]["host_nbest_ms"] = host_nbest_ms
            for stage in ("encoder+ctc", "rescoring"):
                print(f"{recipe} {seconds:2d} s b{batch:<3d} {stage}: " + "  ".join(
                    f"{r['system'].replace('reference ', 'ref ')}: {r['ms']:.3f}" for r in rows[-2 * len(systems):]
                    if r["stage"] == stage) + "".join(f"  ({r['system']} from the host's n-best: {r['host_nbest_ms']:.3f})"
                                                      for r in rows[-2 * len(systems):]
                                                      if r["stage"] == stage and "host_nbest_ms" in r), flush=True)
    return rows

KERNEL_GROUPS = (("attention plugin", ("_attention_kernel",)), ("linear_act plugin", ("_linear_act_kernel",)),
                 ("split_k plugin", ("_split_k_kernel",)),
                 ("Inductor fused", ("triton_",)),
                 ("GEMM", ("gemm", "nvjet", "cutlass", "cublas", "sm90_xmma")), ("convolution", ("conv", "cudnn")))


def kernel_group(name: str) -> str:
    lower = name.lower()
    return next((group for group, keys in KERNEL_GROUPS if any(k in lower for k in keys)), "other")


def kernel_profile(fn, *args) -> list[tuple[str, int, float]]:
    """(kernel name, launches, device ms) of one call of ``fn``, longest first."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(*args)
        torch.cuda.synchronize()
    return sorted(((e.key, e.count, e.self_device_time_total / 1000) for e in prof.key_averages()
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0),
                  key=lambda k: -k[2])


def profile_rows(recipe: str, engine_name: str, engine_dir: str, seconds_list: tuple[int, ...],
                 batches: tuple[int, ...], hyp_tokens: int = HYP_TOKENS, top: int = 40) -> list[dict]:
    """Per-kernel device time of one encoder+CTC call (a CUDA-graph replay) and one rescoring call (from the n-best
    on the device: chain tries, cross K/V and the decoder, 10 hypotheses of ``hyp_tokens`` tokens) at each shape."""
    tr = Transcriber(engine_dir, "cuda")
    session = tr.encoding.session
    rows = []
    for seconds in seconds_list:
        for batch in batches:
            speech, lens = encoder_inputs(batch, seconds)
            inputs = {"speech": speech, "speech_lengths": lens}
            enc = tr.encoding.encode([speech[i].cpu() for i in range(batch)])
            nbest = NBest.from_results(hypotheses(batch, tr.engine.model.vocab_size, seconds, hyp_tokens))
            on_device = device_nbest(nbest)
            for stage, fn, args in (("encoder+ctc", session.run, (inputs,)),
                                    ("rescoring", rescore_on_device, (tr, nbest, on_device, enc))):
                for _ in range(3):  # capture and warm-up
                    fn(*args)
                kernels = kernel_profile(fn, *args)
                groups: dict[str, list[float]] = {}
                for name, count, ms in kernels:
                    g = groups.setdefault(kernel_group(name), [0, 0.0])
                    g[0] += count
                    g[1] += ms
                row = {"recipe": recipe, "stage": stage, "system": engine_name, "batch": batch, "seconds": seconds,
                       "hyp_tokens": hyp_tokens,
                       "kernels": sum(k[1] for k in kernels), "kernel_ms": sum(k[2] for k in kernels),
                       "groups": {g: {"kernels": c, "ms": round(ms, 4)} for g, (c, ms) in groups.items()},
                       "top": [{"name": n, "count": c, "ms": round(ms, 4)} for n, c, ms in kernels[:top]]}
                rows.append(row)
                print(f"profile {recipe} {stage} {engine_name} b{batch} {seconds} s: {row['kernels']} kernels, "
                      f"{row['kernel_ms']:.3f} ms; " + ", ".join(f"{g} {v['ms']:.3f} ms ({v['kernels']})"
                                                            for g, v in row["groups"].items()), flush=True)
    return rows


def mixed_utterances(n: int, folder: str) -> list[tuple[str, str]]:
    """``n`` wav files of 1.5 to 20 s: real utterances alone or joined end to end."""
    sources = sorted(glob.glob(os.path.join(DATA, "aishell_sample", "flac", "*.flac")))
    audio = [load_audio(p) for p in sources]
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        parts, total = [], 0
        target = rng.uniform(1.5, 20.0) * 16000
        while total < target:
            a = audio[rng.integers(len(audio))]
            if total + len(a) > 20 * 16000 and parts:
                break
            parts.append(a[:20 * 16000])
            total += len(parts[-1])
        path = os.path.join(folder, f"utt{i:04d}.wav")
        soundfile.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
        items.append((f"utt{i:04d}", path))
    return items


def reference_pipeline(ref: ReferenceModel, items: list[tuple[str, str]], batch_size: int, dtype: torch.dtype,
                       encode=None) -> tuple[float, float]:
    """(audio seconds, wall seconds) of WeNet's model over the files: read, fbank, encode in
    length-sorted batches, native prefix beam search, rescoring per utterance in one call per direction."""
    start = time.perf_counter()
    feats = [fbank(load_audio(p)) for _, p in items]
    audio = sum(f.shape[0] for f in feats) / 100
    feats.sort(key=lambda f: -f.shape[0])
    encode = encode or ref.encode
    with torch.no_grad():
        for s in range(0, len(feats), batch_size):
            batch = feats[s:s + batch_size]
            lens = torch.tensor([f.shape[0] for f in batch], dtype=torch.int32)
            speech = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True).to("cuda", dtype)
            enc_out, enc_lens, ctc_logp = encode(speech, lens.cuda())[:3]
            prefix = ctc_prefix_beam_search(ctc_logp.float(), enc_lens.cpu(), HYPS)
            for i, p in enumerate(prefix):
                ref.attention_rescoring(p, enc_out[i:i + 1, :int(enc_lens[i])], 0.5, 0.3)
    torch.cuda.synchronize()
    return audio, time.perf_counter() - start


def e2e_rows(recipe: str, model_dir: str, engines: dict[str, str], items: list[tuple[str, str]],
             with_reference: bool = True) -> list[dict]:
    ckpt = read_model_dir(model_dir)
    rows = []
    references = (("reference eager fp32", torch.float32), ("reference eager fp16", torch.float16)) if with_reference else ()
    for name, dtype in references:
        ref = ReferenceModel(ckpt.config)
        ref.load_checkpoint(ckpt.state, ckpt.cmvn)
        ref.to("cuda", dtype)
        reference_pipeline(ref, items[:64], 64, dtype)  # warm-up
        audio, wall = reference_pipeline(ref, items, 64, dtype)
        rows.append({"recipe": recipe, "system": name, "utterances": len(items), "audio_s": audio, "wall_s": wall,
                     "x_real_time": audio / wall})
        print(json.dumps(rows[-1]), flush=True)
        if dtype == torch.float16:
            encode = torch.compile(lambda s, n, ref=ref: ref.encode(s, n)[:3], mode="reduce-overhead")
            reference_pipeline(ref, items, 64, dtype, encode)  # warm-up pass: compiles every shape met
            audio, wall = reference_pipeline(ref, items, 64, dtype, encode)
            rows.append({"recipe": recipe, "system": "reference compiled fp16", "utterances": len(items),
                         "audio_s": audio, "wall_s": wall, "x_real_time": audio / wall})
            print(json.dumps(rows[-1]), flush=True)
    options = DecodingOptions(["attention_rescoring"], HYPS, 0.5, 0.3, 64)
    for name, path in engines.items():
        tr = Transcriber(path, "cuda")
        list(tr.transcribe(items, options))  # warm-up pass: captures the CUDA graphs of every bucket met
        walls = []
        for _ in range(E2E_PASSES):
            tr.audio_seconds = 0.0
            start = time.perf_counter()
            results = list(tr.transcribe(items, options))
            walls.append(time.perf_counter() - start)
        wall = float(np.median(walls))
        rows.append({"recipe": recipe, "system": name, "utterances": len(results), "audio_s": tr.audio_seconds,
                     "wall_s": wall, "x_real_time": tr.audio_seconds / wall, "pass_wall_s": walls})
        tr.times.enabled = True  # a third pass, each stage waited for: where the time goes
        list(tr.transcribe(items, options))
        rows[-1]["stage_s"] = {k: round(v, 4) for k, v in tr.times.seconds.items()}
        print(json.dumps(rows[-1]), flush=True)
    return rows


def latency_rows(recipe: str, engines: dict[str, str], folder: str, seconds: float = 10.0,
                 runs: int = 30) -> list[dict]:
    """Batch 1: one file of ``seconds`` of real speech, path in and text out (attention rescoring, read, fbank,
    encoder, prefix search and rescoring included), median of ``runs`` calls of ``Transcriber.transcribe``; then
    the same calls with each stage waited for, mean seconds per call."""
    sources = sorted(glob.glob(os.path.join(DATA, "aishell_sample", "flac", "*.flac")))
    samples = np.concatenate([load_audio(p) for p in sources[:8]])[:int(seconds * 16000)]
    path = os.path.join(folder, "latency.wav")
    soundfile.write(path, samples, 16000, subtype="PCM_16")
    options = DecodingOptions(["attention_rescoring"], HYPS, 0.5, 0.3, 1)
    rows = []
    for name, engine_dir in engines.items():
        tr = Transcriber(engine_dir, "cuda")
        for _ in range(5):  # warm-up: graph capture of the buckets met
            list(tr.transcribe([("latency", path)], options))
        walls = []
        for _ in range(runs):
            start = time.perf_counter()
            result = list(tr.transcribe([("latency", path)], options))
            walls.append(time.perf_counter() - start)
        tr.times.enabled = True
        for _ in range(runs):
            list(tr.transcribe([("latency", path)], options))
        rows.append({"recipe": recipe, "system": name, "audio_s": len(samples) / 16000,
                     "ms": 1000 * float(np.median(walls)), "tokens": len(result[0].result.tokens),
                     "stage_ms": {k: round(1000 * v / runs, 3) for k, v in tr.times.seconds.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def real_wavs() -> list[str]:
    return sorted(glob.glob(os.path.join(DATA, "wavs", "*.wav"))) + \
        sorted(glob.glob(os.path.join(DATA, "aishell_sample", "flac", "*.flac")))


def agreement(recipe: str, model_dir: str, engines: dict[str, str], wavs: list[str]) -> list[dict]:
    """Engine tokens vs reference.py fp32 on ``wavs`` (greedy, rescoring), clear-margin utterances
    counted; each disagreement is printed with the reference's margin."""
    ckpt = read_model_dir(model_dir)
    ref = ReferenceModel(ckpt.config)
    ref.load_checkpoint(ckpt.state, ckpt.cmvn)
    ref.to("cuda")
    feats = [fbank(load_audio(w)) for w in wavs]
    rw = ckpt.config.reverse_weight
    expected, margins = [], []
    with torch.no_grad(), fp32_exact():
        for f in feats:
            speech, lens = f[None].cuda(), torch.tensor([f.shape[0]], device="cuda")
            enc_out, enc_lens, logp, _ = ref.encode(speech, lens)
            top2 = logp[0, :int(enc_lens[0])].topk(2, -1).values
            prefix = ref.ctc_prefix_beam_search(logp[0].cpu(), int(enc_lens[0]), HYPS)
            resc = ref.attention_rescoring(prefix, enc_out[:, :int(enc_lens[0])], 0.5, rw)
            greedy = ref.ctc_greedy_search(logp[0].cpu(), int(enc_lens[0]))
            margin_resc = resc.nbest_scores[0] - resc.nbest_scores[1] if len(resc.nbest_scores) > 1 else float("inf")
            margins.append((float((top2[:, 0] - top2[:, 1]).min()), margin_resc))
            expected.append((greedy.tokens, resc.tokens))
    rows = []
    for name, path in engines.items():
        tr = Transcriber(path, "cuda")
        decoded = {"ctc_greedy_search": [], "attention_rescoring": []}
        for s in range(0, len(feats), 16):
            out = tr.decode(feats[s:s + 16], DecodingOptions(["ctc_greedy_search", "attention_rescoring"], HYPS, 0.5,
                                                             rw, 16))
            for mode in decoded:
                decoded[mode] += [r.tokens for r in out[mode]]
        for m, mode in enumerate(decoded):
            for i in range(len(feats)):
                if decoded[mode][i] != expected[i][m]:
                    print(f"{name} {mode} differs on {os.path.basename(wavs[i])}: reference margin {margins[i][m]:.2e}")
            counted = [i for i in range(len(feats)) if margins[i][m] > 1e-3]
            same = sum(decoded[mode][i] == expected[i][m] for i in counted)
            same_all = sum(decoded[mode][i] == expected[i][m] for i in range(len(feats)))
            rows.append({"recipe": recipe, "system": name, "mode": mode, "clear_margin": len(counted), "identical_clear": same,
                         "utterances": len(feats), "identical_all": same_all})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["conformer", "u2pp"])
    p.add_argument("--utterances", type=int, default=1000)
    p.add_argument("--parts", nargs="+", default=["kernels", "profile", "e2e", "latency", "agreement"],
                   choices=["kernels", "profile", "e2e", "latency", "agreement"])
    p.add_argument("--reference_parts", nargs="*", default=["kernels", "e2e"], choices=["kernels", "e2e"],
                   help="the parts that also time reference.py (they take most of the time); none: ours only")
    p.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16"],
                   help="our engines' builds")
    p.add_argument("--seconds", nargs="+", type=int, default=list(SECONDS), help="kernels: audio lengths")
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES), help="kernels: batch sizes")
    p.add_argument("--hyp_tokens", type=int, default=HYP_TOKENS, help="profile: tokens per rescored hypothesis")
    p.add_argument("--program_batches", nargs="*", type=int, default=[1],
                   help="the engines' programs: the largest batch of each but the last (64), build.py's option")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    # the plugins' sources by digest, so that an A/B's two reports show which kernels each built
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "plugins": plugins_digest(),
              "command": " ".join(sys.argv), "ceilings": ceilings(), "kernels": [], "profile": [], "e2e": [], "latency": [],
              "agreement": []}
    print(json.dumps({k: report[k] for k in ("device", "torch", "plugins", "ceilings")}), flush=True)
    root = tempfile.mkdtemp()

    def save() -> None:  # after every part: a run stopped by a time limit keeps what it measured
        with open(os.path.join(args.out, "gpu_engines.json"), "w") as f:
            json.dump(report, f, indent=1)

    items = mixed_utterances(args.utterances, tempfile.mkdtemp()) if "e2e" in args.parts else []
    for recipe in args.recipes:
        model_dir = make_random_model(recipe, os.path.join(root, recipe))
        engines = {}
        builds = [(dtype, short) for dtype, short in (("float16", "fp16"), ("bfloat16", "bf16")) if dtype in args.dtypes]
        for dtype, short in builds:
            path = os.path.join(root, f"{recipe}_{short}")
            start = time.perf_counter()
            profiles = Profiles(max_batch_size=64, opt_batch_size=16, max_seconds=20.5, beam_size=HYPS,
                                program_batches=tuple(args.program_batches))
            config = build_engines(model_dir, path, dtype, profiles, compile_device="cuda")
            print(f"built {recipe} {dtype} in {time.perf_counter() - start:.0f} s "
                  f"(compile {config['builder']['compiled']['seconds']} s)", flush=True)
            engines[f"engines {short}"] = path
        if "kernels" in args.parts:
            report["kernels"] += kernel_rows(recipe, model_dir, engines, report["ceilings"],
                                             "kernels" in args.reference_parts, tuple(args.seconds), tuple(args.batches))
            save()
        if "profile" in args.parts:
            name, path = next(iter(engines.items()))
            report["profile"] += profile_rows(recipe, name, path, tuple(args.seconds), tuple(args.batches),
                                              args.hyp_tokens)
            save()
        if "e2e" in args.parts:
            report["e2e"] += e2e_rows(recipe, model_dir, engines, items, "e2e" in args.reference_parts)
            save()
        if "latency" in args.parts:
            report["latency"] += latency_rows(recipe, engines, tempfile.mkdtemp())
            save()
        if "agreement" in args.parts:
            report["agreement"] += agreement(recipe, model_dir, engines, real_wavs())
            save()

    print(report_markdown([report], top_kernels=10))


if __name__ == "__main__":
    main()
