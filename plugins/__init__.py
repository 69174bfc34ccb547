"""Custom kernels (Triton): those registered as torch ops that the fused ops of the network-definition API lower to, and
the runtime's CTC prefix beam search (a CUDA twin of which, faster, lives in ``runtime/native``) and fbank."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # CPU-only installs: the fused ops' decompositions serve
    triton = tl = libdevice = times_sigmoid = swish = None

if triton is not None:
    _INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")

    @triton.jit
    def times_sigmoid(a, x):
        """a·sigmoid(x) = a / (1 + 2^(-x·log2 e)) in fp32 with the hardware's approximate exp2 and division (PTX
        ex2.approx.ftz, div.approx.ftz: a few ulp): the conv module's GLU, kept in fp32, and its depthwise
        convolution's swish. ``tl.sigmoid`` divides with div.full, a longer sequence. The interpreter has no
        approximate division; there it is an ordinary one."""
        e = tl.exp2(x * -1.4426950408889634)
        if _INTERPRETED:
            return a / (1.0 + e)
        return libdevice.fast_dividef(a, 1.0 + e)

    @triton.jit
    def swish(x):
        """x·sigmoid(x) in fp32 as x/2 + x/2·tanh(x/2), for outputs rounded to half: the hardware's approximate tanh
        (PTX tanh.approx.f32) is one special-function op an element where exp2 and a division are two. Its error
        (at most 1e-5 absolute; under a fifth of a half ulp of the output for x > -4, H200) stays under what the
        rounding to half costs: the rms error of an FFN's half output is that of rounding to five digits. A swish
        GEMM of 16,448 x 256 -> 2,048 took 57.2 us instead of 60.3 (H200, session 31). The interpreter has no inline
        PTX; there it is an ordinary swish. Not in the depthwise convolution's kernel, which it made slower (H200:
        0.26 -> 0.36 ms for 12 calls at batch 64)."""
        if _INTERPRETED:
            return x / (1.0 + tl.exp(-x))
        half = 0.5 * x
        tanh = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [half], dtype=tl.float32, is_pure=True,
                                         pack=1)
        return half + half * tanh


def register_op(name: str, fn: Callable, fake: Callable):
    """``fn`` as the torch op ``wenet_trt::<name>``: a ``triton_op`` where Triton is installed, so torch.export and
    Inductor see its kernels, else a plain custom op whose output ``fake`` describes."""
    if triton is not None:
        return torch.library.triton_op(f"wenet_trt::{name}", fn, mutates_args=())
    op = torch.library.custom_op(f"wenet_trt::{name}", fn, mutates_args=())
    op.register_fake(fake)
    return op


MANY_ROWS = 1 << 30  # a planned size that every tile choice takes as many rows


def planned_size(size: int | torch.SymInt) -> int:
    """The size a kernel's tiles are chosen for: ``size`` itself or, where it is a symbol (torch.export and Inductor
    tracing a compiled program), the size the program was traced at: its opt size (``core.compiled.export_dims``), as
    TensorRT picks its tactics at a profile's opt shape. Reading it adds no guard: the program still serves its whole
    range. A symbol without one is planned as large."""
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return int(hint) if hint is not None else MANY_ROWS
    return int(size)


def kernel_available(device: torch.device) -> bool:
    """Whether Triton kernels run for tensors on ``device`` (CUDA, or the CPU under the interpreter)."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def runs_on_gpu(device: torch.device) -> bool:
    """Whether the runtime launches its own kernels (the prefix search, fbank) on ``device``: a GPU, with Triton
    installed (the interpreter is for tests)."""
    return triton is not None and device.type == "cuda"


def launchable(kernel):
    """``kernel`` as the launch sites call it: wrapped by ``wrap_triton`` so that torch.export and Inductor see it,
    except under the interpreter (torch 2.11 refuses to wrap an interpreted kernel)."""
    from torch.library import wrap_triton

    return kernel if os.environ.get("TRITON_INTERPRET") == "1" else wrap_triton(kernel)
