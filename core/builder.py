"""``BuilderConfig`` and ``Builder``: turn defined networks into an engine dir."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from core.dtype import DataType
from core.network import Network, save_network

CONFIG_FILE = "config.json"
BACKENDS = ("torch",)


@dataclass
class BuilderConfig:
    """What the engines are built for; recorded in the engine dir's config.json."""

    dtype: str = "float32"
    backend: str = "torch"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        DataType(self.dtype)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; available: {', '.join(BACKENDS)}")


class Builder:
    def __init__(self, config: BuilderConfig):
        self.config = config

    def build(self, networks: list[Network], output_dir: str, model_config: dict) -> dict:
        """Serializes each network to ``<name>.safetensors`` and writes ``config.json``."""
        os.makedirs(output_dir, exist_ok=True)
        summary = {}
        for network in networks:
            artifact = f"{network.name}.safetensors"
            save_network(network, os.path.join(output_dir, artifact))
            summary[network.name] = {
                "artifact": artifact,
                "inputs": [spec.to_json() for spec in network.inputs.values()],
                "outputs": sorted(network.outputs),
                "nodes": len(network.nodes),
                "parameters": sum(v.numel() for v in network.constants.values()),
            }
        config = {"builder": asdict(self.config), "networks": summary, "model": model_config}
        with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
        return config
