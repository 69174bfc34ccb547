"""The subsampling's first convolution (one input channel, 3x3, stride 2) + ReLU + the second one, four ways.

    python benchmarks/one_channel_conv.py [--batch 64] [--frames 1024]

Each formulation is compiled by Inductor (``torch.compile``) and timed with CUDA events (mean of 20 after warm-up), on
fp16 inputs of AISHELL's shape (80 mel bins, 256 channels); the error is relative to cuDNN's result. It is the
measurement behind ``layers.conv.Conv2d.relu_single_channel`` (the K = 16 GEMM).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as tf

BINS, CHANNELS = 80, 256


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=1024)
    args = p.parse_args()
    b, t, dt = args.batch, args.frames, torch.float16
    x = torch.randn(b, t, BINS, device="cuda", dtype=dt)
    w1 = torch.randn(CHANNELS, 1, 3, 3, device="cuda", dtype=dt) / 3
    b1 = torch.randn(CHANNELS, device="cuda", dtype=dt)
    w2 = (torch.randn(CHANNELS, CHANNELS, 3, 3, device="cuda", dtype=dt) / 48).to(memory_format=torch.channels_last)
    b2 = torch.randn(CHANNELS, device="cuda", dtype=dt)
    t1, f1 = (t - 3) // 2 + 1, (BINS - 3) // 2 + 1
    k16 = tf.pad(w1.view(CHANNELS, 9), (0, 7)).t()  # (16, C): the kernel as a matrix, K padded to 16

    def taps(x):  # (B, T', F', 9): each output's inputs, from strided views
        return torch.stack([x[:, i:i + 2 * t1 - 1:2, j:j + 2 * f1 - 1:2] for i in range(3) for j in range(3)], -1)

    def second(y):  # (B, T', F', C) -> the second convolution, channels last
        return tf.conv2d(y.permute(0, 3, 1, 2), w2, b2, stride=2)

    variants = {
        "cuDNN": lambda x: tf.conv2d(torch.relu(tf.conv2d(x[:, None], w1, b1, stride=2)).contiguous(
            memory_format=torch.channels_last), w2, b2, stride=2),
        "sum of 9 products": lambda x: second(torch.relu(b1.float() + sum(
            taps(x).float()[..., n, None] * w1.view(CHANNELS, 9)[:, n].float() for n in range(9))).to(dt)),
        "K=16 GEMM": lambda x: second(torch.relu((tf.pad(taps(x), (0, 7)).reshape(-1, 16) @ k16 + b1).view(
            b, t1, f1, CHANNELS))),
        "K=16 GEMM, bias+ReLU epilogue": lambda x: second(torch._addmm_activation(
            b1, tf.pad(taps(x), (0, 7)).reshape(-1, 16), k16).view(b, t1, f1, CHANNELS)),
    }
    with torch.no_grad():
        want = variants["cuDNN"](x).float()
        for name, fn in variants.items():
            compiled = torch.compile(fn)
            error = float((compiled(x).float() - want).abs().max() / want.abs().max())
            for _ in range(3):
                compiled(x)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(20):
                compiled(x)
            end.record()
            torch.cuda.synchronize()
            print(f"{torch.cuda.get_device_name()} b{b} x {t} frames, {name:30s} {start.elapsed_time(end) / 20:.3f} ms"
                  f"  relative error {error:.1e}", flush=True)


if __name__ == "__main__":
    main()
