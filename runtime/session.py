"""``Session``: one built network, its input checks against the build profiles, and its execution.

``EngineDir`` opens an engine dir (config.json, one artifact per network, vocabulary) and hands
out Sessions; the runners (``WeNetEncoding``, ``WeNetDecoding``) only see Sessions.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from core.builder import CONFIG_FILE
from core.network import Dim, InputSpec, load_network
from core.torch_backend import TorchEngine
from models.wenet.config import ModelConfig
from weights.files import load_vocab

VOCAB_FILE = "units.txt"


def copy_to_host(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Host copies of ``tensors`` and, from a GPU, the event after which they hold the values: page-locked and
    copied without waiting (for the copy, or for the work queued before it). Off a GPU, the tensors and None."""
    if not tensors or tensors[0].device.type != "cuda":
        return list(tensors), None
    host = [t.to("cpu", non_blocking=True) for t in tensors]  # page-locked by torch (seen on 2.11)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


T = TypeVar("T")


def side_by_side(calls: Sequence[Callable[[], T]], stream: torch.cuda.Stream | None) -> list[T]:
    """Each call's result, the first queued on the current stream and the others on ``stream``, all after the work
    queued so far; what the current stream queues next waits for all of them (a fork and a join, which a CUDA graph's
    capture records as two branches). Without a ``stream`` (off CUDA), in turn. What the calls read must live until
    this returns, as the caller's arguments do: then no memory is reused across the two streams too early."""
    if stream is None:
        return [call() for call in calls]
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        rest = [call() for call in calls[1:]]
    first = calls[0]()
    current.wait_stream(stream)
    return [first, *rest]


class ProfileError(ValueError):
    """An input outside what the engine was built for (shape beyond a profile, wrong dtype, ...)."""


def _input_specs(inputs: list[dict]) -> dict[str, InputSpec]:
    """The input specs a config.json entry records, by name."""
    return {spec.name: spec for spec in map(InputSpec.from_json, inputs)}


class Session:
    """One engine network, whichever backend built it: input checks, then execution."""

    def __init__(self, name: str, inputs: dict[str, InputSpec], engine: Callable[[dict], dict]):
        self.name = name
        self.inputs = inputs
        self._engine = engine

    @staticmethod
    def compiled(engine_dir: str, name: str, info: dict, device: str | torch.device) -> Session:
        """A compiled network (``info``: its config.json entry) with CUDA graphs per bucket on CUDA."""
        from core.compiled import CompiledEngine, CompiledNetwork

        device = torch.device(device)
        specs = _input_specs(info["inputs"])
        return Session(name, specs, CompiledEngine(CompiledNetwork.load(engine_dir, info["compiled"], device), specs,
                                                   device))

    @staticmethod
    def from_artifact(path: str, device: str | torch.device = "cpu", inputs: list[dict] | None = None) -> Session:
        """A ``.safetensors`` network (PyTorch lowering) or a ``.plan`` (TensorRT; ``inputs`` from config.json)."""
        if path.endswith(".plan"):
            from core.tensorrt_backend import TensorRTEngine

            with open(path, "rb") as f:
                engine = TensorRTEngine(f.read(), device)
            return Session(os.path.splitext(os.path.basename(path))[0], _input_specs(inputs or []), engine)
        network = load_network(path)
        return Session(network.name, network.inputs, TorchEngine(network, device))

    @property
    def capturable(self) -> Callable[[dict], dict] | None:
        """A compiled engine's network, to capture into a CUDA graph with other work (``CompiledEngine.capturable``);
        None for other engines."""
        return getattr(self._engine, "capturable", None)

    def profile(self, dim_name: str) -> Dim:
        for spec in self.inputs.values():
            for d in spec.dims:
                if isinstance(d, Dim) and d.name == dim_name:
                    return d
        raise KeyError(f"{self.name}: no dynamic dim {dim_name!r}")

    def check(self, inputs: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.inputs) - set(inputs))
        extra = sorted(set(inputs) - set(self.inputs))
        if missing or extra:
            raise ProfileError(f"{self.name}: missing inputs {missing}, unknown inputs {extra}")
        sizes: dict[str, int] = {}
        for name, spec in self.inputs.items():
            value = inputs[name]
            if value.dtype != spec.dtype.torch:
                raise ProfileError(f"{self.name}: input {name!r} must be {spec.dtype.value}, got {value.dtype}")
            if value.dim() != len(spec.dims):
                raise ProfileError(f"{self.name}: input {name!r} must have rank {len(spec.dims)}, got {list(value.shape)}")
            for axis, (dim, size) in enumerate(zip(spec.dims, value.shape)):
                if isinstance(dim, Dim):
                    if not dim.min <= size <= dim.max:
                        raise ProfileError(f"{self.name}: input {name!r} dim {axis} ({dim.name}) = {size} is outside "
                                           f"the built profile [{dim.min}, {dim.max}]")
                    if sizes.setdefault(dim.name, size) != size:
                        raise ProfileError(f"{self.name}: dim {dim.name} is {sizes[dim.name]} in one input and "
                                           f"{size} in {name!r}")
                elif size != dim:
                    raise ProfileError(f"{self.name}: input {name!r} dim {axis} must be {dim}, got {size}")

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs on the engine's device; inputs may be on the host or there (the engine moves them)."""
        self.check(inputs)
        with torch.inference_mode():
            return self._engine(inputs)


class EngineDir:
    """A built engine dir: its config, vocabulary and (lazily opened) network Sessions.

    ``compiled``: run the compiled engines (``.inductor``, CUDA graphs on CUDA) where the build made them;
    None: on CUDA devices only.
    """

    def __init__(self, path: str, device: str | torch.device = "cpu", compiled: bool | None = None):
        config_path = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{path}: not an engine dir (no {CONFIG_FILE}); build one with build.py")
        with open(config_path, encoding="utf-8") as f:
            self.config = json.load(f)
        self.path = path
        self.device = torch.device(device)
        self.model = ModelConfig.from_json(self.config["model"]["wenet"])
        self.vocab = load_vocab(os.path.join(path, VOCAB_FILE))
        self.compiled = self.device.type == "cuda" if compiled is None else compiled
        self.compiled = self.compiled and "compiled" in self.config["builder"]
        built_by = self.config["builder"].get("compiled", {}).get("torch")
        if self.compiled and built_by != torch.__version__:  # Inductor's artifacts hold code for one torch version
            raise ValueError(f"{path}: compiled by torch {built_by}, this is torch {torch.__version__}; rebuild the "
                             "engines with build.py")
        if self.compiled and any("program" in info.get("compiled", {}) for info in self.config["networks"].values()):
            raise ValueError(f"{path}: compiled by an older build.py (one program per network, before session 26's "
                             "programs per batch range); rebuild the engines with build.py")
        if any(spec["name"] == "r_hyps_path" for spec in self.config["networks"].get("decoder", {}).get("inputs", [])):
            raise ValueError(f"{path}: built by an older build.py (both rescoring directions in one decoder network, "
                             "before session 35's decoder and r_decoder); rebuild the engines with build.py")

    @property
    def reuses_outputs(self) -> bool:
        """Whether sessions return buffers that their next call overwrites (compiled engines' CUDA graphs)."""
        return self.compiled and self.device.type == "cuda"

    @property
    def buckets(self) -> dict[str, list[int]]:
        """The CUDA graphs' shape buckets per dynamic dim, all programs' (compiled engines; else none)."""
        buckets: dict[str, set[int]] = {}
        for program in self.config["builder"].get("programs", []) if self.compiled else []:
            for name, sizes in program["buckets"].items():
                buckets.setdefault(name, set()).update(sizes)
        return {name: sorted(sizes) for name, sizes in buckets.items()}

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.config["builder"]["dtype"])

    @functools.cached_property
    def sessions(self) -> dict[str, Session]:
        sessions = {}
        for name, info in self.config["networks"].items():
            if self.compiled and "compiled" in info:
                sessions[name] = Session.compiled(self.path, name, info, self.device)
            else:
                sessions[name] = Session.from_artifact(os.path.join(self.path, info["artifact"]), self.device,
                                                       info["inputs"])
        return sessions
