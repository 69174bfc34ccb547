"""WeNet's Conv2dSubsampling4/6/8 (two or three stride convs + ReLU, then a Linear)."""

from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module, ModuleList
from core.tensor import Tensor
from layers.conv import Conv2d
from layers.embedding import PositionalEncoding
from layers.linear import Linear, linear

# input_layer -> ((kernel, stride) per conv, key of the output Linear)
SUBSAMPLING = {
    "conv2d": ([(3, 2), (3, 2)], "out"),
    "conv2d6": ([(3, 2), (5, 3)], "linear"),
    "conv2d8": ([(3, 2), (3, 2), (3, 2)], "linear"),
}


def subsampled_length(length: int, input_layer: str) -> int:
    """Output frames of an input of ``length`` frames (WeNet's mask arithmetic; <= 0 means none)."""
    for kernel, stride in SUBSAMPLING[input_layer][0]:
        length = (length - kernel) // stride + 1
    return length


def subsampling_rate(input_layer: str) -> int:
    rate = 1
    for _, stride in SUBSAMPLING[input_layer][0]:
        rate *= stride
    return rate


class Conv2dSubsampling(Module):
    """Keys as WeNet: ``conv.0``/``conv.2``(/``conv.4``), then ``out.0`` (4x) or ``linear`` (6x, 8x)."""

    def __init__(self, input_layer: str, idim: int, odim: int, pos_enc: PositionalEncoding, dtype: DataType):
        super().__init__()
        if input_layer not in SUBSAMPLING:
            raise ValueError(f"unsupported input_layer {input_layer!r}; supported: {sorted(SUBSAMPLING)}")
        self.layers, out_key = SUBSAMPLING[input_layer]
        convs, channels, freq = [], 1, idim
        for kernel, stride in self.layers:
            convs.append(Conv2d(channels, odim, kernel, stride, dtype=dtype))
            channels, freq = odim, (freq - kernel) // stride + 1
        self.conv = ModuleList(convs, indices=range(0, 2 * len(convs), 2))
        self.flat_dim = odim * freq
        linear = Linear(self.flat_dim, odim, dtype=dtype)
        if out_key == "out":
            self.out = ModuleList([linear])
        else:
            self.linear = linear
        self.pos_enc = pos_enc

    @property
    def output_linear(self) -> Linear:
        return self.out[0] if "out" in self._modules else self.linear

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, idim), lengths (B,) int32 -> x (B, T', D), lengths (B,), pos_emb (see PositionalEncoding)."""
        first, *rest = self.conv
        x = first.relu_single_channel(x)  # (B, F', T', C): channels last, frequency before time
        for conv in rest:  # convolutions see (B, C, F', T') views of channels-last data
            x = F.permute(F.relu(conv(F.permute(x, [0, 3, 1, 2]), time_last=True)), [0, 2, 3, 1])
        # WeNet flattens (B, T', C, F') channel-major; flattening (B, T', F', C) instead reads channels-last rows,
        # and the Linear's weight columns are permuted to match (a constant: folded).
        x = F.permute(x, [0, 2, 1, 3])
        freq, channels = x.shape[2], x.shape[3]
        x = F.view(x, [F.shape(x, 0), F.shape(x, 1), self.flat_dim])
        out = self.output_linear
        weight = F.view(F.permute(F.view(out.weight.value, [out.out_features, channels, freq]), [0, 2, 1]),
                        [out.out_features, self.flat_dim])
        x = linear(x, weight, out.bias.value)
        x, pos_emb = self.pos_enc(x)
        for kernel, stride in self.layers:
            lengths = (lengths - kernel) // stride + 1
        return x, F.maximum(lengths, 0), pos_emb
