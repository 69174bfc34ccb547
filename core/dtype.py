"""Data types of the network-definition API and their backend equivalents."""

from __future__ import annotations

from enum import Enum

import torch


class DataType(str, Enum):
    """Element type of a network tensor. Networks are strongly typed: every tensor has one."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    int8 = "int8"
    int32 = "int32"
    int64 = "int64"
    bool = "bool"

    @property
    def is_float(self) -> bool:
        return self in (DataType.float32, DataType.float16, DataType.bfloat16)

    @property
    def torch(self) -> torch.dtype:
        return _TO_TORCH[self]

    @staticmethod
    def from_torch(dtype: torch.dtype) -> DataType:
        for ours, theirs in _TO_TORCH.items():
            if theirs == dtype:
                return ours
        raise TypeError(f"torch dtype {dtype} has no network DataType")


_TO_TORCH = {
    DataType.float32: torch.float32,
    DataType.float16: torch.float16,
    DataType.bfloat16: torch.bfloat16,
    DataType.int8: torch.int8,
    DataType.int32: torch.int32,
    DataType.int64: torch.int64,
    DataType.bool: torch.bool,
}


def fp32_exact():
    """A context in which fp32 means fp32 on a GPU: torch lets cuDNN's convolutions use TF32 by default (Ampere
    and later), whose 10-bit mantissa rounds as coarsely as fp16 (about 1e-3 error)."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
