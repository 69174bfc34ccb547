from __future__ import annotations

from core import functional as F
from core.dtype import DataType
from core.module import Module
from core.tensor import Tensor
from layers.conv import Conv1d
from layers.normalization import LayerNorm


class ConvolutionModule(Module):
    """The conformer convolution module: pointwise conv + GLU, depthwise conv, norm, activation, pointwise conv.

    BatchNorm is folded into ``depthwise_conv`` when weights are loaded, so only the LayerNorm
    variant has a norm here. Causal: WeNet pads the (k-1) left frames *before* pointwise_conv1, so
    they read GLU(bias); here the depthwise convolution pads them with that constant, so that the
    norm before the module writes its frames unpadded, in the same kernel as the residual add (a
    padded copy took a pass of its own). Non-causal: padded frames are zeroed after the GLU so that
    they cannot leak into the last frames of shorter utterances (WeNet's batched leak), which
    gives every utterance its batch-1 result.
    """

    def __init__(self, channels: int, kernel_size: int, activation: str, norm: str,
                 causal: bool, norm_eps: float, dtype: DataType):
        super().__init__()
        if not causal and kernel_size % 2 != 1:
            raise ValueError(f"a non-causal conv module needs an odd kernel, got {kernel_size}")
        self.activation = activation
        self.causal = causal
        self.pointwise_conv1 = Conv1d(channels, 2 * channels, 1, dtype=dtype)
        padding = (kernel_size - 1, 0) if causal else (kernel_size - 1) // 2
        self.depthwise_conv = Conv1d(channels, channels, kernel_size, padding=padding, groups=channels, dtype=dtype)
        self.norm = LayerNorm(channels, norm_eps) if norm == "layer_norm" else None
        self.pointwise_conv2 = Conv1d(channels, channels, 1, dtype=dtype)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, D), valid (B, T) bool; channels last throughout. The GLU (in the first pointwise convolution's
        epilogue), the depthwise convolution and the norm run in fp32, rounded to the layer's dtype once, before the
        activation and the second pointwise convolution."""
        dtype = x.dtype
        mask = F.unsqueeze(valid, 2)  # (B, T, 1)
        x = F.where(mask, x, 0.0)
        x = self.pointwise_conv1.pointwise(x, "glu", DataType.float32)
        bias = self.pointwise_conv1.bias
        pad_value = None  # causal: WeNet's padded frames, zeros before pointwise_conv1, read GLU(bias) after it
        if self.causal and bias is not None:
            pad_value = F.activation(F.cast(bias.value, DataType.float32), "glu")
        x = self.depthwise_conv.depthwise_norm_act(x, self.activation, dtype, self.norm,
                                                   valid=None if self.causal else valid, pad_value=pad_value)
        return F.where(mask, self.pointwise_conv2.pointwise(x), 0.0)
