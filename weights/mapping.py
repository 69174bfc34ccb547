"""WeNet checkpoint keys -> network parameters, with every key accounted for.

WeNet loads with ``strict=False`` and silently keeps random weights for missing keys; here a
missing or unexpected key is an error that names it. Transformations at load time:
BatchNorm folded into the depthwise conv; CMVN buffers taken from the checkpoint (or the
CMVN file where an old checkpoint lacks them); legacy and derivable keys skipped.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from models.wenet.model import WeNetModel

# Present in some checkpoints, never used at inference: pre-2022-05 concat_after layers,
# position tables (recomputed), BatchNorm's counter.
KNOWN_UNUSED = (
    re.compile(r".*\.concat_linear[12]?\.(weight|bias)$"),
    re.compile(r".*(pos_enc|embed\.1)\.pe$"),
    re.compile(r".*\.num_batches_tracked$"),
)
BN_STATS = ("weight", "bias", "running_mean", "running_var")


class WeightMappingError(ValueError):
    """A checkpoint that does not fit the model train.yaml describes; the message names the keys."""


def _fold_batch_norm(state: dict[str, torch.Tensor], prefix: str, eps: float, used: set[str]) -> dict[str, torch.Tensor]:
    """BN(conv(x)) = conv'(x): scale = gamma / sqrt(var + eps); w' = w*scale; b' = (b - mean)*scale + beta."""
    names = [f"{prefix}.norm.{s}" for s in BN_STATS] + [f"{prefix}.depthwise_conv.weight", f"{prefix}.depthwise_conv.bias"]
    missing = [n for n in names if n not in state]
    if missing:
        raise WeightMappingError(f"BatchNorm folding needs checkpoint keys that are missing: {missing}")
    gamma, beta, mean, var, weight, bias = (state[n].double() for n in names)
    scale = gamma / torch.sqrt(var + eps)
    used.update(names)
    return {f"{prefix}.depthwise_conv.weight": weight * scale[:, None, None],
            f"{prefix}.depthwise_conv.bias": (bias - mean) * scale + beta}


def map_checkpoint(state: dict[str, torch.Tensor], model: WeNetModel,
                   cmvn: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """The value of every parameter of ``model``, from the checkpoint ``state``."""
    params = dict(model.named_parameters())
    used: set[str] = set()
    values: dict[str, torch.Tensor] = {}
    encoder = model.config.encoder
    if encoder.use_cnn_module and encoder.cnn_module_norm == "batch_norm":
        for i in range(encoder.num_blocks):
            values.update(_fold_batch_norm(state, f"encoder.encoders.{i}.conv_module", encoder.conv_norm_eps, used))
    for name in ("encoder.global_cmvn.mean", "encoder.global_cmvn.istd"):
        if name not in state:  # old checkpoints: CMVN comes from the file (identity if the model has none)
            dim = params[name].shape[0]
            if cmvn is not None:
                values[name] = torch.from_numpy(cmvn[0] if name.endswith("mean") else cmvn[1])
            else:
                values[name] = torch.zeros(dim) if name.endswith("mean") else torch.ones(dim)
    for name in params:
        if name not in values and name in state:
            values[name] = state[name]
            used.add(name)

    missing = sorted(set(params) - set(values))
    unexpected = sorted(k for k in state if k not in used and not any(p.match(k) for p in KNOWN_UNUSED))
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) missing from the checkpoint: {missing[:8]}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint key(s) this model does not use: {unexpected[:8]}")
    for name, value in values.items():
        if tuple(value.shape) != params[name].shape:
            problems.append(f"{name}: checkpoint shape {list(value.shape)}, model expects {list(params[name].shape)}")
    if problems:
        raise WeightMappingError("checkpoint does not match train.yaml: " + "; ".join(problems))
    return values


def load_weights(model: WeNetModel, values: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        param.set_value(values[name])
