"""Compiled engines (CUDA): the PyTorch lowering exported, compiled by Inductor, replayed as CUDA graphs.

Build time: a build has one or more programs (TensorRT's optimization profiles), each a range of shape buckets
and the opt sizes its kernels are tuned for. Per program, each network's lowering is exported with ``torch.export``
(its dynamic dims bounded by the program's smallest and largest bucket, traced at the program's opt sizes) and the
exported graph is compiled once by Inductor with symbolic shapes (``torch._inductor.standalone_compile``, shapes
"from the graph"): one compiled program serves every shape in its range, with no guards and no recompilation. The
plugins choose their tiles from the sizes traced (``plugins.planned_size``), so a batch-1 program and a batch-64
one run differently tiled kernels. Written to the engine dir: ``<network>.<i>.inductor`` (program i's compiled
artifact: generated kernels and wrapper) and ``<network>.constants.safetensors`` (the weights, in the programs'
input order). AOTInductor packages, the other serialized form, crash on load in torch 2.11 (every loader, on CUDA
and CPU: see docs/architecture.md).

Run time (``CompiledEngine``): the first program whose buckets hold the inputs runs them. Inputs are copied into one
device buffer allocated once for the profile maximum (``InputArena``; host inputs all in one copy from a page-locked
mirror), padded up to their shape bucket (batch rows repeat row 0, so padding rows are valid inputs; other dims are
zero-padded and masked by the lengths inputs), and each bucket runs as a CUDA graph captured on first use. Outputs
are views of the graph's static outputs, cut back to the real sizes of the dims they share with the inputs, and
valid until the next call.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.utils._pytree as pytree
from safetensors.torch import load_file, save_file
from torch._inductor.runtime.cache_dir_utils import cache_dir, temporary_cache_dir

import plugins.attention  # noqa: F401 - these register the custom ops that exported graphs call
import plugins.depthwise  # noqa: F401
import plugins.linear  # noqa: F401
import plugins.token_log_probs  # noqa: F401
import plugins.top_k_log_probs  # noqa: F401
from core.dtype import fp32_exact
from core.network import Dim, InputSpec, Network
from core.torch_backend import TorchEngine

PROGRAM_SUFFIX = ".inductor"
CONSTANTS_SUFFIX = ".constants.safetensors"
REPEAT_DIMS = ("batch",)  # padded by repeating row 0; every other dim is zero-padded
ALIGN = 256  # bytes, of each input's offset in the input arena
_BITS = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}  # host inputs are placed as bits: bf16 has no numpy type
_TORCH_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class NetworkModule(torch.nn.Module):
    """A network's PyTorch lowering as a module: ``forward(inputs) -> outputs`` (dicts by name)."""

    def __init__(self, network: Network, device: torch.device):
        super().__init__()
        self.engine = TorchEngine(network, device)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.engine._run(inputs)


def pick_bucket(sizes: list[int], size: int) -> int:
    """The smallest bucket holding ``size`` (callers check the profile max first)."""
    return sizes[min(bisect.bisect_left(sizes, size), len(sizes) - 1)]


def dynamic_dims(inputs: dict[str, InputSpec]) -> dict[str, Dim]:
    return {d.name: d for spec in inputs.values() for d in spec.dims if isinstance(d, Dim)}


def example_inputs(inputs: dict[str, InputSpec], sizes: dict[str, int], device: torch.device) -> dict[str, torch.Tensor]:
    """Inputs of the given dim sizes: zeros, and ones for integers (lengths of at least one)."""
    return {name: torch.full(_shape(spec, sizes), 1 if spec.dtype.torch in (torch.int32, torch.int64) else 0,
                             dtype=spec.dtype.torch, device=device) for name, spec in inputs.items()}


def export_dims(inputs: dict[str, InputSpec], program: dict) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """A program's ([min, max] of each dim it leaves dynamic, the size of each dim it traces at). A dim is static where
    the program holds its minimum alone (nothing is padded up to it: a batch-1 program); a dim of one larger bucket
    keeps a two-value range (a one-value Dim would be a constant, and its outputs uncut). Traced at the program's opt
    sizes, at least 2 (sizes 0 and 1 would be specialized into the graph)."""
    ranges, sizes = {}, {}
    for name, d in dynamic_dims(inputs).items():
        buckets = program["buckets"][name]
        if buckets == [d.min]:
            sizes[name] = d.min
            continue
        low, high = min(buckets[0], buckets[-1] - 1), buckets[-1]
        ranges[name] = (low, high)
        sizes[name] = min(max(program["opt"][name], low, 2), high)
    return ranges, sizes


def export_network(network: Network, program: dict, device: torch.device):
    """``torch.export`` of the lowering over one program's ranges (``export_dims``)."""
    ranges, sizes = export_dims(network.inputs, program)
    dims = {n: torch.export.Dim(n.replace(".", "_"), min=low, max=high) for n, (low, high) in ranges.items()}
    dynamic = {name: {axis: dims[d.name] for axis, d in enumerate(spec.dims) if isinstance(d, Dim) and d.name in dims}
               for name, spec in network.inputs.items()}
    example = example_inputs(network.inputs, sizes, device)
    with torch.no_grad():
        return torch.export.export(NetworkModule(network, device), (example,), dynamic_shapes={"inputs": dynamic},
                                   strict=False)


def output_dims(exported, inputs: dict[str, InputSpec]) -> dict[str, list[str | None]]:
    """For each output axis, the input dim whose size it always has (None if it is derived or fixed)."""
    placeholders = [n for n in exported.graph.nodes if n.op == "placeholder"]
    user = placeholders[len(placeholders) - len(exported.graph_signature.user_inputs):]
    symbols = {}
    for node, spec in zip(user, inputs.values()):  # user inputs flatten in dict order
        for axis, d in enumerate(spec.dims):
            size = node.meta["val"].shape[axis]
            if isinstance(d, Dim) and isinstance(size, torch.SymInt):  # not the dims a program holds one size of
                symbols[str(size)] = d.name
    output_node = next(n for n in exported.graph.nodes if n.op == "output")
    values = pytree.tree_unflatten([n.meta["val"] for n in output_node.args[0]], exported.call_spec.out_spec)
    return {name: [symbols.get(str(s)) for s in value.shape] for name, value in values.items()}


@dataclass
class Program:
    """One compiled program of a network: what it runs, the shape buckets it serves (per dynamic dim) and, per output
    axis, the input dim whose size it has (``output_dims``)."""

    run: Callable
    buckets: dict[str, list[int]]
    output_dims: dict[str, list[str | None]]

    def holds(self, sizes: dict[str, int]) -> bool:
        return all(size <= self.buckets[name][-1] for name, size in sizes.items())


@dataclass
class CompiledNetwork:
    """Inductor's programs for a network, their constant inputs (the same for every program), and how their flat
    outputs are named."""

    programs: list[Program]
    constants: list[torch.Tensor]
    input_names: list[str]
    output_names: list[str]

    def __call__(self, program: Program, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = program.run(*self.constants, *(inputs[n] for n in self.input_names))
        return dict(zip(self.output_names, outputs))

    def save(self, engine_dir: str, name: str) -> dict:
        """Writes the programs and the constants; returns what ``load`` reads (the network's config.json entry)."""
        programs = []
        for i, program in enumerate(self.programs):
            path = f"{name}.{i}{PROGRAM_SUFFIX}"
            program.run.save(path=os.path.join(engine_dir, path), format="binary")
            programs.append({"program": path, "buckets": program.buckets, "output_dims": program.output_dims})
        # safetensors wants one owner per storage: constants that share memory are copied apart
        save_file({f"{i:05d}": t.detach().cpu().clone().contiguous() for i, t in enumerate(self.constants)},
                  os.path.join(engine_dir, f"{name}{CONSTANTS_SUFFIX}"))
        return {"programs": programs, "constants": f"{name}{CONSTANTS_SUFFIX}", "input_names": self.input_names,
                "output_names": self.output_names}

    @staticmethod
    def load(engine_dir: str, info: dict, device: torch.device) -> CompiledNetwork:
        programs = [Program(load_program(os.path.join(engine_dir, p["program"])), p["buckets"], p["output_dims"])
                    for p in info["programs"]]
        constants = load_file(os.path.join(engine_dir, info["constants"]), device=str(device))
        return CompiledNetwork(programs, [constants[k] for k in sorted(constants)], info["input_names"],
                               info["output_names"])


def load_program(path: str) -> Callable:
    """A saved program, loaded through a compile cache of its own, named by the file's content. Inductor's cache keys
    a program by its graph, in which a plugin is its op's name, and keeps several entries under one key: loaded into
    the shared cache, a program that differs from one loaded before only inside its plugins (another version of them,
    tiles for other opt sizes) was served the earlier one's kernels (torch 2.11 and 2.13; an A/B of two builds on one machine
    ran the first build's kernels in both)."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    with temporary_cache_dir(os.path.join(cache_dir(), f"wenet_trt-program-{digest}")):
        return torch._inductor.CompiledArtifact.load(path=path, format="binary")


@functools.cache
def plugins_digest() -> str:
    """A digest of the plugins' sources. Inductor's compile cache keys a graph by its ops, and a plugin's op by its
    name: a build after a kernel changed was served the old kernel from the cache (torch 2.11), so each version of
    the plugins compiles into a cache of its own."""
    root = os.path.dirname(os.path.abspath(plugins.__file__))
    digest = hashlib.sha256()
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()[:16]


def network_programs(inputs: dict[str, InputSpec], programs: list[dict]) -> list[dict]:
    """The build's programs as one network sees them: restricted to its dims, those it sees alike merged."""
    names = set(dynamic_dims(inputs))
    seen = []
    for program in programs:
        mine = {part: {n: v for n, v in program[part].items() if n in names} for part in ("opt", "buckets")}
        if mine not in seen:
            seen.append(mine)
    return seen


def compile_program(exported, program: dict) -> Callable:
    """One Inductor compilation of the exported graph, symbolic in every dim the export left dynamic."""
    # Compile from the export's own fake inputs: its symbols (with their ranges) for the dynamic dims
    # and static sizes for everything else. standalone_compile finds the export's fake mode through
    # the outputs' "example_value" (Dynamo's name for export's "val").
    graph = exported.graph_module
    fake_inputs = [node.meta["val"] for node in graph.graph.nodes if node.op == "placeholder"]
    for node in graph.graph.find_nodes(op="output")[0].args[0]:
        node.meta["example_value"] = node.meta["val"]
    # The cache may not tell programs apart by the sizes their plugins' tiles were chosen for: one cache per opt too.
    opt = hashlib.sha256(json.dumps(program["opt"], sort_keys=True).encode()).hexdigest()[:8]
    with temporary_cache_dir(os.path.join(cache_dir(), f"wenet_trt-plugins-{plugins_digest()}-{opt}")):
        return torch._inductor.standalone_compile(graph, fake_inputs, dynamic_shapes="from_graph")


def compile_network(network: Network, programs: list[dict], device: torch.device) -> CompiledNetwork:
    """The network exported and compiled once per program it sees (``network_programs``)."""
    compiled, targets, constants, output_names = [], None, [], []
    for program in network_programs(network.inputs, programs):
        exported = export_network(network, program, device)
        signature = exported.graph_signature
        these = [s.target for s in signature.input_specs if s.kind.name != "USER_INPUT"]
        if targets is None:  # the first export names the constants and outputs for all
            targets = these
            constants = [(exported.state_dict[t] if t in exported.state_dict else exported.constants[t]).to(device)
                         for t in targets]
            order = pytree.tree_unflatten(list(range(len(signature.output_specs))), exported.call_spec.out_spec)
            output_names = sorted(order, key=order.get)
        elif these != targets:
            raise RuntimeError(f"{network.name}: its programs take their constants in different orders")
        compiled.append(Program(compile_program(exported, program), program["buckets"],
                                output_dims(exported, network.inputs)))
    return CompiledNetwork(compiled, constants, list(network.inputs), output_names)


class InputArena:
    """A bucket's inputs as views of one device buffer, each aligned to ``ALIGN`` bytes, smallest (at the profile
    maximum) first: lengths, tokens and weights, which come from the host, lie together ahead of activations.

    Inputs that come from the host are written, padded, into a page-locked mirror of the buffer and moved by one
    copy per run of adjacent host inputs; inputs already on the device are copied into their views. Every bucket
    lays its inputs out from offset 0, so the buffer sized for the profile maximum serves them all."""

    def __init__(self, inputs: dict[str, InputSpec], most: dict[str, int], device: torch.device):
        self.order = sorted(inputs, key=lambda n: _numel(inputs[n], most) * inputs[n].dtype.torch.itemsize)
        self.inputs = inputs
        self.repeat_axes = {name: [axis for axis, d in enumerate(spec.dims) if isinstance(d, Dim) and d.name in REPEAT_DIMS]
                            for name, spec in inputs.items()}
        self.staged = device.type == "cuda"  # off CUDA, the host is the device
        size = self.layout(most)[1]
        self.buffer = torch.zeros(size, dtype=torch.uint8, device=device)
        self.host_buffer = torch.zeros(size, dtype=torch.uint8, pin_memory=self.staged)
        self.mirror = self.host_buffer.numpy()
        self.copied: torch.cuda.Event | None = None  # the last host-to-device copy, which reads the mirror

    def layout(self, sizes: dict[str, int]) -> tuple[dict[str, tuple[int, int]], int]:
        """(byte offset and size per input, total bytes) of a bucket."""
        spans, offset = {}, 0
        for name in self.order:
            nbytes = _numel(self.inputs[name], sizes) * self.inputs[name].dtype.torch.itemsize
            spans[name] = (offset, nbytes)
            offset += -(-nbytes // ALIGN) * ALIGN
        return spans, max(offset, ALIGN)

    def views(self, sizes: dict[str, int]) -> Bucket:
        spans, _ = self.layout(sizes)
        device, host = {}, {}
        for name, spec in self.inputs.items():
            start, nbytes = spans[name]
            shape = _shape(spec, sizes)
            device[name] = self.buffer[start:start + nbytes].view(spec.dtype.torch).view(shape)
            host[name] = self.mirror[start:start + nbytes].view(_BITS[spec.dtype.torch.itemsize]).reshape(shape)
        return Bucket(spans, device, host)

    def fill(self, bucket: Bucket, inputs: dict[str, torch.Tensor]) -> None:
        """The bucket's views hold ``inputs``, padded (batch rows repeat row 0; other dims zero-padded)."""
        from_host = tuple(name for name, value in inputs.items() if self.staged and not value.is_cuda)
        if from_host:
            if self.copied is not None:
                self.copied.synchronize()  # the mirror is free again once the last copy has read it
            for name in from_host:
                value = inputs[name]
                _place(bucket.host[name], value.view(_TORCH_BITS[value.element_size()]).numpy(), self.repeat_axes[name])
            runs = bucket.runs.get(from_host)
            if runs is None:
                runs = bucket.runs[from_host] = self.copy_runs(bucket, set(from_host))
            for device, host in runs:
                device.copy_(host, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()
        for name, value in inputs.items():
            if name not in from_host:
                _place(bucket.device[name], value, self.repeat_axes[name])

    def copy_runs(self, bucket: Bucket, from_host: set[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(device, mirror) byte ranges that move the bucket's ``from_host`` inputs: one per run of adjacent ones."""
        runs: list[list[int]] = []  # [start, end)
        adjacent = False
        for name in self.order:
            start, nbytes = bucket.spans[name]
            if name in from_host and adjacent:
                runs[-1][1] = start + nbytes
            elif name in from_host:
                runs.append([start, start + nbytes])
            adjacent = name in from_host
        return [(self.buffer[start:end], self.host_buffer[start:end]) for start, end in runs]


@dataclass
class Bucket:
    """One bucket's input views: byte spans in the arena, the device views the graph reads, the host mirror's."""

    spans: dict[str, tuple[int, int]]
    device: dict[str, torch.Tensor]
    host: dict[str, np.ndarray]
    runs: dict[tuple[str, ...], list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)  # copy_runs


def capture_graph(fn: Callable[[], object], device: torch.device, pool) -> tuple[torch.cuda.CUDAGraph, object]:
    """(graph, what ``fn`` returned while captured) of ``fn``'s GPU work, captured into the memory ``pool`` after one
    run outside the capture (first launches load kernels, make library handles and plans)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread-local: other threads (the transcriber's readers uploading audio) may use CUDA meanwhile
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        outputs = fn()
    return graph, outputs


def _place(target, value, repeat_axes: list[int]) -> None:
    """``value`` into the leading corner of ``target`` (both numpy arrays, or both tensors), the rest zero, and
    the ``repeat_axes`` padded with copies of their first row."""
    if target.shape == value.shape:
        target[...] = value
        return
    target[...] = 0
    target[tuple(map(slice, value.shape))] = value
    for axis in repeat_axes:
        size, full = value.shape[axis], target.shape[axis]
        if size < full:
            pad = tuple(slice(size, full) if a == axis else slice(None) for a in range(target.ndim))
            first = tuple(slice(0, 1) if a == axis else slice(None) for a in range(target.ndim))
            target[pad] = target[first]


class CompiledEngine:
    """A compiled network on one CUDA device; called like ``TorchEngine``, with CUDA graphs per bucket. Inputs
    may be on the host or the device."""

    def __init__(self, network: CompiledNetwork, inputs: dict[str, InputSpec], device: torch.device):
        self.device = device
        self.inputs = inputs
        self.module = network
        self.cuda_graphs = device.type == "cuda"
        self.arena = InputArena(inputs, {n: d.max for n, d in dynamic_dims(inputs).items()}, device)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph | None, dict | None, Bucket]] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    @property
    def capturable(self) -> Callable[[dict], dict] | None:
        """The compiled network itself, for a caller that captures it into a CUDA graph of its own: called on device
        tensors of any shape in the profiles, without input checks, arena or graph. None off CUDA."""
        return self._run_program if self.cuda_graphs else None

    def _run_program(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.module(self.program(self.sizes(inputs)), inputs)

    def sizes(self, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
        """The size of each dynamic dim in ``inputs``."""
        return {d.name: inputs[name].shape[axis] for name, spec in self.inputs.items()
                for axis, d in enumerate(spec.dims) if isinstance(d, Dim)}

    def program(self, sizes: dict[str, int]) -> Program:
        """The first program whose buckets hold ``sizes`` (the last one holds the profile maximum)."""
        return next((p for p in self.module.programs if p.holds(sizes)), self.module.programs[-1])

    def _capture(self, program: Program, static: dict[str, torch.Tensor]):
        """(graph, static outputs) of one bucket; no graph off CUDA."""
        if not self.cuda_graphs:
            return None, None
        return capture_graph(lambda: self.module(program, static), self.device, self.pool)

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        real = self.sizes(inputs)
        program = self.program(real)
        sizes = {n: pick_bucket(program.buckets[n], s) for n, s in real.items()}
        key = tuple(sorted(sizes.items()))
        entry = self.graphs.get(key)
        bucket = entry[2] if entry is not None else self.arena.views(sizes)
        self.arena.fill(bucket, inputs)
        if entry is None:
            with fp32_exact():  # what a replay runs is chosen as it is captured
                entry = self.graphs[key] = (*self._capture(program, bucket.device), bucket)
        graph, outputs, _ = entry
        if graph is None:
            with fp32_exact():
                outputs = self.module(program, bucket.device)
        else:
            graph.replay()  # a replay reads no flags: the ~7 us of switching cuDNN's are saved on this path
        return {name: _cut(value, program.output_dims.get(name, []), real) for name, value in outputs.items()}


def _shape(spec: InputSpec, sizes: dict[str, int]) -> list[int]:
    return [sizes[d.name] if isinstance(d, Dim) else d for d in spec.dims]


def _numel(spec: InputSpec, sizes: dict[str, int]) -> int:
    return math.prod(_shape(spec, sizes))


def _cut(value: torch.Tensor, dims: list[str | None], real: dict[str, int]) -> torch.Tensor:
    for axis, name in enumerate(dims):
        if name is not None and value.shape[axis] != real[name]:
            value = value.narrow(axis, 0, real[name])
    return value
