"""Readers for the files of a WeNet model dir, each failing with a message that names the file."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from models.wenet.config import ModelConfig


class ModelFileError(ValueError):
    """A model-dir file is missing, unreadable or inconsistent."""


VOCAB_NAMES = ("units.txt", "words.txt", "lang_char.txt")
CMVN_NAME = "global_cmvn"


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A WeNet ``final.pt``/``avg_N.pt``: a flat state dict of tensors."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise ModelFileError(f"{path}: cannot load checkpoint: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    return state


def load_cmvn(path: str, is_json: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean, istd) as WeNet computes them in float64 from JSON or Kaldi-text statistics."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read CMVN stats: {e}") from e
    try:
        if is_json or text.lstrip().startswith("{"):
            stats = json.loads(text)
            mean_stat = np.asarray(stats["mean_stat"], dtype=np.float64)
            var_stat = np.asarray(stats["var_stat"], dtype=np.float64)
            count = float(stats["frame_num"])
        else:  # Kaldi text: [ sums ... count \n sumsq ... 0 ]
            values = [float(v) for v in text.replace("[", " ").replace("]", " ").split()]
            dim = len(values) // 2 - 1
            mean_stat, count = np.asarray(values[:dim]), values[dim]
            var_stat = np.asarray(values[dim + 1: 2 * dim + 1])
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: malformed CMVN stats: {e}") from e
    if count <= 0 or mean_stat.shape != var_stat.shape:
        raise ModelFileError(f"{path}: malformed CMVN stats (frame count {count}, dims {mean_stat.shape}/{var_stat.shape})")
    mean = mean_stat / count
    var = np.maximum(var_stat / count - mean * mean, 1.0e-20)
    return mean, 1.0 / np.sqrt(var)


def load_vocab(path: str) -> list[str]:
    """``symbol id`` per line, ids 0..V-1 each exactly once."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read vocabulary: {e}") from e
    table: dict[int, str] = {}
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ModelFileError(f"{path}:{n}: expected 'symbol id', got {line!r}")
        if int(parts[1]) in table:
            raise ModelFileError(f"{path}:{n}: id {parts[1]} appears twice")
        table[int(parts[1])] = parts[0]
    if sorted(table) != list(range(len(table))):
        raise ModelFileError(f"{path}: ids are not 0..{len(table) - 1}")
    return [table[i] for i in range(len(table))]


@dataclass
class ModelDir:
    """The files of a WeNet experiment dir."""

    path: str
    checkpoint: str
    train_yaml: str
    vocab: str
    cmvn: str | None

    @staticmethod
    def locate(path: str, checkpoint: str | None = None) -> ModelDir:
        if not os.path.isdir(path):
            raise ModelFileError(f"{path}: model dir not found")
        if checkpoint is None:
            for pattern in ("final.pt", "avg_*.pt"):
                found = sorted(glob.glob(os.path.join(path, pattern)))
                if found:
                    checkpoint = found[0]
                    break
            else:
                raise ModelFileError(f"{path}: no final.pt or avg_N.pt checkpoint")
        train_yaml = os.path.join(path, "train.yaml")
        if not os.path.isfile(train_yaml):
            raise ModelFileError(f"{train_yaml}: not found")
        vocab = next((os.path.join(path, n) for n in VOCAB_NAMES if os.path.isfile(os.path.join(path, n))), None)
        if vocab is None:
            raise ModelFileError(f"{path}: no vocabulary ({' / '.join(VOCAB_NAMES)})")
        cmvn = os.path.join(path, CMVN_NAME)
        return ModelDir(path, checkpoint, train_yaml, vocab, cmvn if os.path.isfile(cmvn) else None)


@dataclass
class WeNetCheckpoint:
    """Everything a model dir holds, read and cross-checked."""

    files: ModelDir
    config: ModelConfig
    state: dict[str, torch.Tensor]
    cmvn: tuple[np.ndarray, np.ndarray] | None
    vocab: list[str]


def read_model_dir(path: str, checkpoint: str | None = None) -> WeNetCheckpoint:
    from models.wenet.config import load_config, resolve

    files = ModelDir.locate(path, checkpoint)
    config = load_config(files.train_yaml)
    vocab = load_vocab(files.vocab)
    if len(vocab) != config.vocab_size:
        raise ModelFileError(f"{files.vocab}: {len(vocab)} symbols, but train.yaml has output_dim {config.vocab_size}")
    state = load_checkpoint(files.checkpoint)
    cmvn = None
    if config.cmvn_file is not None or files.cmvn is not None:
        cmvn_path = resolve(path, config.cmvn_file, CMVN_NAME)
        if os.path.isfile(cmvn_path):
            cmvn = load_cmvn(cmvn_path, config.is_json_cmvn)
        elif "encoder.global_cmvn.mean" not in state:
            raise ModelFileError(f"{cmvn_path}: CMVN stats named by train.yaml not found, and the checkpoint has none")
    return WeNetCheckpoint(files, config, state, cmvn, vocab)
