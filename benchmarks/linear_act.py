"""The ``linear_act`` plugin (one Triton GEMM with a bias + activation epilogue) against cuBLAS + Inductor's epilogue
kernel, at the shapes the engines run it at, and a sweep of its tile sizes.

    python benchmarks/linear_act.py [--out linear_act.json]

Shapes (fp16): an encoder FFN's first GEMM (256 -> 2,048, swish) at batch 1, 16 and 64 x 10 s (250, 4,000, 16,000
rows), the decoder FFN's (relu) for 64 x 10 hypotheses of 24 tokens, the subsampling's one-channel convolution as
a K = 16 GEMM (relu) and the conv module's first pointwise convolution with its GLU (256 -> 512 -> 256, fp32 out)
at batch 64 x 10 s. Each is timed as a CUDA graph of 20 calls (device time per call, no launch
gaps), as the engines run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.ops import linear_act_features  # noqa: E402
from plugins.linear import config, launch  # noqa: E402

SHAPES = {  # name: (rows, N, K, activation)
    "encoder ffn w_1, b1 10 s": (250, 2048, 256, "swish"),
    "encoder ffn w_1, b16 10 s": (4000, 2048, 256, "swish"),
    "encoder ffn w_1, b64 10 s": (16000, 2048, 256, "swish"),
    "decoder ffn w_1, 64 x 10 x 24 tokens": (15360, 2048, 256, "relu"),
    "one-channel conv, b64 10 s": (64 * 39 * 511, 256, 16, "relu"),
    "conv module pointwise_conv1 + GLU (fp32 out), b64 10 s": (64 * 257, 512, 256, "glu"),
}
TILES = [dict(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), t))
         for t in [*itertools.product((64, 128), (128, 256), (4, 8), (3,)),
                   (64, 64, 4, 3), (128, 64, 4, 3), (128, 128, 8, 4), (128, 256, 8, 4)]]


def graph_ms(fn, calls: int = 20) -> float:
    """Device milliseconds per call of ``fn``, replayed as one CUDA graph of ``calls`` calls (median of 5)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return sorted(times)[2]


def measure(name: str, m: int, n: int, k: int, act: str) -> dict:
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).half().cuda()
    w = (torch.randn(n, k, generator=g) / k**0.5).half().cuda()
    b = torch.randn(n, generator=g).half().cuda()
    fn = {"swish": torch.nn.functional.silu, "relu": torch.relu,
          "glu": lambda y: torch.nn.functional.glu(y.float(), -1)}[act]  # as the conv module: GLU kept in fp32
    out_dtype = torch.float32 if act == "glu" else None
    inductor = torch.compile(lambda x, w, b: fn(x @ w.T + b), dynamic=False)
    want = inductor(x, w, b)
    cublas_ms = graph_ms(lambda: inductor(x, w, b))
    mm_ms = graph_ms(lambda: x @ w.T)
    error = float((launch(x, w, b, act, out_dtype).float() - want.float()).abs().max())
    default_ms = graph_ms(lambda: launch(x, w, b, act, out_dtype))
    sweep = []
    for tiles in TILES:
        try:
            sweep.append((graph_ms(lambda tiles=tiles: launch(x, w, b, act, out_dtype, **tiles)), tiles))
        except Exception as e:  # a tile too large for shared memory or registers
            sweep.append((float("inf"), {**tiles, "error": type(e).__name__}))
    best_ms, best = min(sweep, key=lambda s: s[0])
    print(f"{name}: cuBLAS mm {mm_ms * 1e3:.1f} us, + Inductor epilogue {cublas_ms * 1e3:.1f} us; plugin default "
          f"{default_ms * 1e3:.1f} us, best {best_ms * 1e3:.1f} us {best}; max |error| {error:.2e}", flush=True)
    return {"shape": name, "rows": m, "n": n, "k": k, "activation": act, "cublas_mm_ms": mm_ms,
            "cublas_plus_inductor_epilogue_ms": cublas_ms, "plugin_default_ms": default_ms,
            "default_tiles": config(linear_act_features(n, act), k, act, m), "plugin_best_ms": best_ms,
            "best_tiles": best, "max_abs_error": error,
            "tflops_at_best": 2 * m * n * k / best_ms / 1e9,
            "sweep": [{"ms": ms, **tiles} for ms, tiles in sweep]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="linear_act.json")
    args = p.parse_args()
    rows = [measure(name, *shape) for name, shape in SHAPES.items()]
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
