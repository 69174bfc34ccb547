"""``BuilderConfig`` and ``Builder``: turn defined networks into an engine dir."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from core.dtype import DataType
from core.network import Network, save_network

CONFIG_FILE = "config.json"
BACKENDS = ("torch", "tensorrt")
TIMING_CACHE_FILE = "timing.cache"


@dataclass
class BuilderConfig:
    """What the engines are built for; recorded in the engine dir's config.json."""

    dtype: str = "float32"
    decoder_dtype: str = ""  # the attention decoders' and cross K/V's, where it differs from dtype
    code: str = ""  # fingerprint of the sources that define the networks (build.code_fingerprint)
    backend: str = "torch"
    compile: bool = False  # torch backend: export + Inductor (+ CUDA graphs on CUDA), core/compiled.py
    compile_device: str = "cuda"
    # compiled engines' programs (TensorRT's optimization profiles): each {"opt": sizes its kernels are tuned for,
    # "buckets": its shape buckets}, per dynamic dim
    programs: list[dict[str, dict]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        DataType(self.dtype)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; available: {', '.join(BACKENDS)}")


class Builder:
    def __init__(self, config: BuilderConfig):
        self.config = config

    def build(self, networks: list[Network], output_dir: str, model_config: dict) -> dict:
        """Writes one artifact per network and ``config.json``: ``<name>.safetensors`` (the network
        and its weights, run by the PyTorch lowering) or ``<name>.plan`` (a TensorRT engine)."""
        os.makedirs(output_dir, exist_ok=True)
        summary = {}
        backend_info: dict = {}
        if self.config.backend == "tensorrt":
            from core.tensorrt_backend import tensorrt_version

            backend_info["tensorrt_version"] = tensorrt_version()
        for network in networks:
            network.fold_constants()
            artifact = self._write(network, output_dir)
            summary[network.name] = {
                "artifact": artifact,
                "inputs": [spec.to_json() for spec in network.inputs.values()],
                "outputs": sorted(network.outputs),
                "nodes": len(network.nodes),
                "parameters": sum(v.numel() for v in network.constants.values()),
            }
        if self.config.compile:
            backend_info["compiled"] = self._compile(networks, output_dir, summary)
        config = {"builder": {**asdict(self.config), **backend_info}, "networks": summary, "model": model_config}
        with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
        return config

    def _compile(self, networks: list[Network], output_dir: str, summary: dict) -> dict:
        """Exports and compiles, on the compile device, every network whose dynamic dims all have
        buckets, once per program; records each one's ``compiled`` artifacts. Returns what it ran on."""
        import time

        import torch

        from core.compiled import compile_network, dynamic_dims

        device = torch.device(self.config.compile_device)
        start = time.perf_counter()
        for network in networks:
            if not all(set(dynamic_dims(network.inputs)) <= set(p["buckets"]) for p in self.config.programs):
                continue
            compiled = compile_network(network, self.config.programs, device)
            summary[network.name]["compiled"] = compiled.save(output_dir, network.name)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return {"torch": torch.__version__, "device": name, "seconds": round(time.perf_counter() - start, 1)}

    def _write(self, network: Network, output_dir: str) -> str:
        if self.config.backend == "torch":
            artifact = f"{network.name}.safetensors"
            save_network(network, os.path.join(output_dir, artifact))
            return artifact
        from core.tensorrt_backend import build_plan

        cache_path = os.path.join(output_dir, TIMING_CACHE_FILE)
        cache = open(cache_path, "rb").read() if os.path.exists(cache_path) else b""
        plan, cache = build_plan(network, cache)
        with open(cache_path, "wb") as f:
            f.write(cache)
        artifact = f"{network.name}.plan"
        with open(os.path.join(output_dir, artifact), "wb") as f:
            f.write(plan)
        return artifact
