"""Check that every TensorRT name our lowering uses exists in the real bindings of TensorRT 10.x and 11.x.

    python tools/check_tensorrt_api.py [--versions 10.16.1.11 11.4.0.106]

TensorRT cannot run here, but its Python bindings wheel (``tensorrt-cu12-bindings``) installs, and
its compiled module ``tensorrt.so`` holds the name of every class, method, property and enum member
it binds. The method:
1. run our whole TensorRT path -- every op's lowering with every attribute variant, the WeNet
   engine networks in fp32 and fp16, the builder configuration, and the engine runner -- against
   ``Recorder``, a stand-in for the ``tensorrt`` module that records each attribute read, set or
   called on it or on anything it returned;
2. read the identifiers compiled into each wheel's ``tensorrt.so``;
3. report every recorded name missing from a wheel. A typo, or an API removed in 11.x (the
   weak-typing ``BuilderFlag.FP16``, ``OBEY_PRECISION_CONSTRAINTS``, ...), fails.
The linker stores a string that ends another only once (``DIV`` lives inside ``FLOOR_DIV``,
``mark_output`` inside ``unmark_output``), so a name counts as present when a compiled identifier
ends with it. A name present in the module for another reason passes too: the check can miss a
problem, never invent one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import functional as F  # noqa: E402
from core.dtype import DataType  # noqa: E402
from core.network import Dim, Network, net_guard  # noqa: E402
from core.ops import _HOST_BINARY, _TRT_ACTIVATION, _TRT_BINARY  # noqa: E402
from core.tensorrt_backend import TensorRTEngine, configure, define_network  # noqa: E402

VERSIONS = ("10.16.1.11", "11.4.0.106")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "wenet-trt", "tensorrt-bindings")


class Recorder:
    """Stands in for the tensorrt module and everything it returns; records every name used."""

    def __init__(self, log: set[str], path: str = "trt"):
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        self._log.add(name)
        return Recorder(self._log, f"{self._path}.{name}")

    def __setattr__(self, name: str, value) -> None:
        self._log.add(name)

    def __call__(self, *args, **kwargs):
        return Recorder(self._log, f"{self._path}()")

    # Enough behaviour for the code paths to run: one I/O tensor, truthy results, every enum "matches".
    def __int__(self) -> int:
        return 1

    __index__ = __int__

    def __bool__(self) -> bool:
        return True

    def __eq__(self, other) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __iter__(self):
        return iter(())


def every_op_network() -> Network:
    """One network exercising every op and every attribute variant of the op table."""
    net = Network("every_op")
    b, t = Dim("b", 1, 2, 4), Dim("t", 1, 8, 16)
    with net_guard(net):
        x = net.add_input("x", DataType.float32, [b, t, 4])
        n = net.add_input("n", DataType.int32, [b])
        for op in _TRT_BINARY:
            if op in ("lt", "gt", "eq"):
                F._binary(x, x, op)
            elif op in ("and", "or"):
                F._binary(x > 0.0, x < 1.0, op)
            elif op in _HOST_BINARY:
                F._binary(n, n, op)
            if op not in ("lt", "gt", "eq", "and", "or", "floordiv"):
                F._binary(x, x, op)
        for op in ("exp", "log", "sqrt", "neg", "abs", *_TRT_ACTIVATION):
            F._unary(x, op)
        F.logical_not(x > 0.0)
        for op in ("sum", "max", "min", "mean"):
            net.emit("reduce", [x], op=op, dims=[1], keepdim=op == "sum")
        F.softmax(x, -1)
        F.log_softmax(x, -1)
        h = F.cast(x, DataType.float16)
        F.layer_norm(F.cast(h, DataType.float32), F.constant(torch.ones(4)), F.constant(torch.zeros(4)), 1e-5)
        c = x.transpose(1, 2)
        F.conv1d(c, F.constant(torch.ones(4, 1, 3)), F.constant(torch.zeros(4)), padding=(2, 0), groups=4)
        F.conv1d(c, F.constant(torch.ones(4, 4, 1)))
        F.conv2d(F.unsqueeze(x, 1), F.constant(torch.ones(2, 1, 3, 3)), F.constant(torch.zeros(2)), stride=2)
        F.view(x, [F.shape(x, 0), -1])
        F.view(F.slice(x, 1, 0, 2), [2, 2, 2])
        F.squeeze(F.unsqueeze(x, 0), 0)
        F.concat([x, x], 1)
        F.slice(x, 1, F.shape_constant([1]), F.shape(x, 1) - 1)
        F.pad(x, 1, 3, 0)
        positions = F.arange(F.shape(x, 1))
        F.arange(F.shape(x, 1), DataType.float32)
        F.gather(x, positions, 1)
        F.gather_elements(x, F.cast(F.unsqueeze(F.make_valid_mask(n, F.shape(x, 1)), 2), DataType.int32), 2)
        F.where(F.make_valid_mask(n, F.shape(x, 1)), F.sum(x, [2]), 0.0)
        values, indices = F.topk(x, 2, -1)
        F.matmul(x, x, transpose_b=True)
        F.dequantize(F.quantize(x, F.constant(torch.tensor(0.1))), F.constant(torch.tensor(0.1)))
        w8 = F.constant(torch.ones(3, 4, dtype=torch.int8))
        F.matmul(x, F.dequantize(w8, F.constant(torch.full((3,), 0.5)), axis=0), transpose_b=True)
        net.mark_output(values, "values")
        net.mark_output(x, "x_again")  # an input marked as output goes through an identity
    return net


def wenet_networks() -> list[Network]:
    """The engine networks (one rescoring network per decoder direction) of every layer option, fp32 and fp16 (small
    sizes)."""
    from models.wenet.config import DecoderConfig, EncoderConfig, ModelConfig
    from models.wenet.model import WeNetModel
    from models.wenet.networks import Profiles, build_networks

    nets = []
    tiny = {"output_size": 8, "attention_heads": 2, "linear_units": 16, "num_blocks": 1}
    variants = [  # every layer option: BN/LN, causal or not, 4x/6x/8x subsampling, rel/abs positions, both decoders
        ({"cnn_module_kernel": 3}, "transformer", {}),
        ({"causal": True, "cnn_module_norm": "layer_norm", "cnn_module_kernel": 4, "input_layer": "conv2d6"},
         "bitransformer", {"r_num_blocks": 1}),
        ({"input_layer": "conv2d8", "pos_enc_layer_type": "abs_pos", "selfattention_layer_type": "selfattn",
          "macaron_style": False, "cnn_module_kernel": 3}, "transformer", {}),
    ]
    for encoder, kind, decoder in variants:
        config = ModelConfig(input_dim=80, vocab_size=10, encoder=EncoderConfig(**tiny, **encoder),
                             decoder=DecoderConfig(kind=kind, attention_heads=2, linear_units=16, num_blocks=1,
                                                   **decoder), sos=9, eos=9)
        for dtype in (DataType.float32, DataType.float16):
            model = WeNetModel(config, dtype, 500)
            for _, p in model.named_parameters():
                p.set_value(torch.zeros(p.shape))
            nets += build_networks(model, Profiles(max_batch_size=2, max_seconds=5, beam_size=2))
    return nets


def names_used(version: str) -> set[str]:
    log: set[str] = set()
    trt = Recorder(log)
    object.__setattr__(trt, "__version__", version)
    for graph in [every_op_network(), *wenet_networks()]:
        builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
        network, _ = define_network(trt, builder, graph)
        config = configure(trt, builder, graph)
        builder.build_serialized_network(network, config)
        config.get_timing_cache().serialize()
    engine = TensorRTEngine(b"", "cpu", trt=trt)
    engine({"x": torch.zeros(2), "empty": torch.zeros(0)}, stream=0)
    return log


def bindings_names(version: str) -> set[str]:
    """Identifiers compiled into the bindings wheel of ``version`` (downloaded once into a cache)."""
    folder = os.path.join(CACHE, version)
    wheels = [f for f in os.listdir(folder)] if os.path.isdir(folder) else []
    if not wheels:
        os.makedirs(folder, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", folder, f"tensorrt-cu12-bindings=={version}"], check=True)
        wheels = os.listdir(folder)
    with zipfile.ZipFile(os.path.join(folder, wheels[0])) as z:
        module = next(n for n in z.namelist() if re.search(r"tensorrt[^/]*\.so$", n))
        data = z.read(module)
    return {m.decode() for m in re.findall(rb"[A-Za-z_][A-Za-z0-9_]{1,}", data)}


def missing_names(used: set[str], compiled: set[str]) -> set[str]:
    return {name for name in used if name not in compiled and not any(c.endswith(name) for c in compiled)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--versions", nargs="+", default=list(VERSIONS))
    args = p.parse_args()
    failed = False
    for version in args.versions:
        used = names_used(version)
        missing = missing_names(used, bindings_names(version))
        print(f"TensorRT {version}: {len(used)} names used, {len(missing)} missing {sorted(missing)}")
        failed |= bool(missing)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
