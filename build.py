"""Build engines from a WeNet model dir (default: the shipped demo model).

    python build.py --model_dir exp/u2pp --output_dir engines/u2pp [--dtype float16] [--max_batch_size 16]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import sys
import time

import torch

from core.builder import Builder, BuilderConfig
from core.dtype import DataType
from core.tensorrt_backend import TensorRTUnavailable, tensorrt_usable
from models.wenet.config import ConfigError
from models.wenet.model import WeNetModel
from models.wenet.networks import Profiles, build_networks, seconds_to_frames
from plugins.ctc_prefix_beam_search import cuda_kernel
from runtime.session import VOCAB_FILE
from weights.files import ModelFileError, read_model_dir
from weights.mapping import WeightMappingError, load_weights, map_checkpoint

REPO = os.path.dirname(os.path.abspath(__file__))
DEMO_MODEL_DIR = os.path.join(REPO, "examples", "aishell_demo", "model")
DEMO_ENGINE_DIR = os.path.join(REPO, "engines", "aishell_demo")
NETWORK_SOURCES = ("core", "layers", "models/wenet", "weights", "plugins")  # what a built network depends on


def code_fingerprint() -> str:
    """A hash of the sources that define the engine networks; engines built by other code carry another."""
    digest = hashlib.sha256()
    for folder in NETWORK_SOURCES:
        for path in sorted(glob.glob(os.path.join(REPO, folder, "*.py"))):
            digest.update(os.path.relpath(path, REPO).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def build_engines(model_dir: str, output_dir: str, dtype: str = "float32", profiles: Profiles | None = None,
                  checkpoint: str | None = None, backend: str = "torch", compile_device: str | None = None,
                  decoder_dtype: str | None = None) -> dict:
    """Reads the model dir, maps every checkpoint tensor to a parameter, writes the engine dir; with
    ``compile_device`` (torch backend) also the compiled engines for that device."""
    profiles = profiles or Profiles()
    ckpt = read_model_dir(model_dir, checkpoint)
    model = WeNetModel(ckpt.config, DataType(dtype), seconds_to_frames(profiles.max_seconds),
                       DataType(decoder_dtype) if decoder_dtype else None)
    load_weights(model, map_checkpoint(ckpt.state, model, ckpt.cmvn))
    networks = build_networks(model, profiles)
    builder_config = BuilderConfig(dtype=dtype, backend=backend, decoder_dtype=decoder_dtype or dtype, code=code_fingerprint(),
                                   compile=compile_device is not None,
                                   compile_device=compile_device or "cuda",
                                   programs=profiles.programs(ckpt.config.encoder.input_layer) if compile_device else [])
    config = Builder(builder_config).build(
        networks, output_dir, {"wenet": ckpt.config.to_json(), "profiles": profiles.to_json(),
                               "checkpoint": ckpt.files.checkpoint, "vocabulary": VOCAB_FILE,
                               # As in WeNet, CMVN is part of the encoder (its checkpoint buffers win over the file).
                               "cmvn": "encoder.safetensors: encoder.global_cmvn.mean, encoder.global_cmvn.istd (fp32)"})
    shutil.copyfile(ckpt.files.vocab, f"{output_dir}/{VOCAB_FILE}")
    if compile_device is not None and torch.device(compile_device).type == "cuda":
        cuda_kernel(torch.device(compile_device))  # the runtime's CUDA prefix search, compiled now, not in the first run
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default=DEMO_MODEL_DIR,
                   help="WeNet dir: final.pt/avg_N.pt, train.yaml, global_cmvn, units.txt (default: the demo model)")
    p.add_argument("--output_dir", default=DEMO_ENGINE_DIR, help="engine dir to write")
    p.add_argument("--checkpoint", help="a checkpoint other than the model dir's final.pt")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--decoder_dtype", choices=["float32", "float16", "bfloat16"],
                   help="the attention decoders' (rescoring, attention search); default: --dtype")
    p.add_argument("--max_batch_size", type=int, default=16)
    p.add_argument("--opt_batch_size", type=int, default=8)
    p.add_argument("--max_seconds", type=float, default=40.0, help="longest utterance the engines accept")
    p.add_argument("--opt_seconds", type=float, default=10.0)
    p.add_argument("--beam_size", type=int, default=10, help="most hypotheses per utterance")
    p.add_argument("--program_batches", type=int, nargs="*", default=[1],
                   help="compiled engines: the largest batch of each program but the last (whose is --max_batch_size);"
                        " each program's kernels are tiled for its batch range (default: 1, a program for lone files)")
    p.add_argument("--backend", choices=["auto", "torch", "tensorrt"], default="auto",
                   help="auto: tensorrt where TensorRT imports and a GPU is present, else the PyTorch lowering")
    p.add_argument("--no_compile", action="store_true",
                   help="torch backend on a CUDA machine: skip the compiled engines (export + Inductor + CUDA graphs)")
    args = p.parse_args(argv)
    backend = args.backend
    if backend == "auto":
        backend = "tensorrt" if tensorrt_usable() else "torch"
    profiles = Profiles(args.max_batch_size, args.opt_batch_size, args.max_seconds, args.opt_seconds, args.beam_size,
                        tuple(args.program_batches))
    start = time.perf_counter()
    try:
        compile_device = "cuda" if backend == "torch" and torch.cuda.is_available() and not args.no_compile else None
        config = build_engines(args.model_dir, args.output_dir, args.dtype, profiles, args.checkpoint, backend,
                               compile_device, args.decoder_dtype)
    except (ModelFileError, ConfigError, WeightMappingError, ValueError, TensorRTUnavailable) as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    for name, info in config["networks"].items():
        compiled = "".join(f" + {p['program']}" for p in info["compiled"]["programs"]) if "compiled" in info else ""
        print(f"{name:14s} {info['nodes']:5d} nodes  {info['parameters'] / 1e6:7.2f} M weights  -> {info['artifact']}"
              f"{compiled}")
    if "compiled" in config["builder"]:
        c = config["builder"]["compiled"]
        print(f"compiled for {c['device']} (torch {c['torch']}) in {c['seconds']} s")
    print(f"built {len(config['networks'])} {args.dtype} {backend} networks into {args.output_dir} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
