"""The PyTorch lowering: runs a recorded network node by node with each op's ``torch`` rule."""

from __future__ import annotations

import torch

from core.dtype import fp32_exact
from core.network import Network
from core.ops import OPS


class TorchEngine:
    """A network lowered to PyTorch on one device. Call it with a dict of input tensors."""

    def __init__(self, network: Network, device: str | torch.device = "cpu"):
        self.network = network
        self.device = torch.device(device)
        self.constants = {k: v.to(self.device) for k, v in network.constants.items()}
        last_use: dict[str, int] = {}
        for i, node in enumerate(network.nodes):
            for name in node.inputs:
                last_use[name] = i
        keep = set(network.outputs.values()) | set(self.constants)
        self.program = []
        for i, node in enumerate(network.nodes):
            op = OPS[node.op]
            attrs = dict(node.attrs)
            if getattr(op, "needs_device", False):
                attrs["device"] = self.device
            dead = [n for n in set(node.inputs) if last_use[n] == i and n not in keep]
            self.program.append((op.torch, node.inputs, node.outputs, attrs, dead))

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with fp32_exact():
            return self._run(inputs)

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env: dict = {**self.constants, **{k: v.to(self.device) for k, v in inputs.items()}}
        for lowering, in_names, out_names, attrs, dead in self.program:
            result = lowering(*[env[n] for n in in_names], **attrs)
            if len(out_names) == 1:
                env[out_names[0]] = result
            else:
                env.update(zip(out_names, result))
            for name in dead:  # free intermediates as soon as nothing reads them
                del env[name]
        return {name: env[tensor] for name, tensor in self.network.outputs.items()}
