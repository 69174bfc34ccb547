"""``InputTable``: a CUDA graph that reads its inputs where they lie, through a table of their addresses.

Why: a captured graph reads fixed addresses, so before each replay a caller copies the call's inputs into the graph's
own buffers. From Python each copy costs ~7-12 us of host time on the H200 machines: ~45 us for the rescoring graph's
six inputs at batch 1, in which the GPU idles. Here the host writes each input's address and layout, a few integers,
into a page-locked table. The graph's first nodes copy the table to the device and gather every input into the graph's
buffers, one kernel for all. An input on the host (a few lengths) travels in the table itself.

An input is copied as rows of 32-bit words into the leading corner of its buffer: rows over the dims before the first
one whose size differs from the buffer's (tokens (B, N, T) into (B, N, W): B*N rows of T words), each row contiguous.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from plugins import tl, triton

FIELDS = 6  # an input's table entry: source and target address, rows, words a row, source and target row stride (words)
PROGRAMS = 128  # programs an input: enough for a batch-64 encoder output (8 MB) in one pass of few iterations
BLOCK = 1024  # words a program moves per iteration

if triton is not None:

    @triton.jit
    def _gather_kernel(TABLE, BLOCK: tl.constexpr):
        entry = TABLE + tl.program_id(0) * 6
        source = tl.load(entry).to(tl.pointer_type(tl.int32))
        target = tl.load(entry + 1).to(tl.pointer_type(tl.int32))
        words = tl.load(entry + 3)
        total = tl.load(entry + 2) * words
        source_stride, target_stride = tl.load(entry + 4), tl.load(entry + 5)
        start = tl.program_id(1) * BLOCK
        while start < total:
            i = start + tl.arange(0, BLOCK)
            held = i < total
            row, word = i // words, i % words
            value = tl.load(source + row * source_stride + word, mask=held)
            tl.store(target + row * target_stride + word, value, mask=held)
            start += tl.num_programs(1) * BLOCK


def row_layout(value: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, int, int, int, int]:
    """(the tensor to read, rows, words a row, its row stride in words, the target's row stride in words) that copy
    ``value`` into the leading corner of a contiguous tensor of ``shape``. ``value`` itself where its rows are
    contiguous and equally spaced, else a contiguous copy of it (which the caller holds until the copy has run)."""
    if value.dim() != len(shape) or any(v > s for v, s in zip(value.shape, shape)):
        raise ValueError(f"an input of shape {list(value.shape)} does not fit its graph buffer {list(shape)}")
    axis = next((i for i, (v, s) in enumerate(zip(value.shape, shape)) if v != s), value.dim())
    if value.shape[axis + 1:] != tuple(shape[axis + 1:]):
        raise ValueError(f"an input of shape {list(value.shape)} differs from its graph buffer {list(shape)} in more "
                         "than one dim")
    rows = math.prod(value.shape[:axis]) if axis < value.dim() else 1
    row_bytes = value.numel() * value.element_size() // max(rows, 1)
    if row_bytes % 4:
        raise ValueError(f"an input's rows of {row_bytes} bytes are not whole 32-bit words")
    flat = value.reshape(rows, -1)  # a view where the rows allow it
    if flat.data_ptr() != value.data_ptr() or (flat.shape[1] > 1 and flat.stride(1) != 1):
        value = value.contiguous()
        flat = value.view(rows, -1)
    target_row = math.prod(shape[axis:]) * value.element_size() if axis < value.dim() else row_bytes
    return value, rows, row_bytes // 4, flat.stride(0) * value.element_size() // 4, target_row // 4


class InputTable:
    """The gather of a graph's inputs into ``targets`` (its contiguous input buffers, by name): ``write`` a call's
    inputs into the table on the host, and ``gather`` (captured into the graph) copies it to the device and them
    into the buffers. A table is written again only once ``read`` (an event after the replay) has passed."""

    def __init__(self, targets: dict[str, torch.Tensor], host_words: int = 256):
        """``host_words``: room for the 32-bit words of the inputs that are on the host."""
        self.targets = targets
        self.entries = len(targets) * FIELDS
        device = next(iter(targets.values())).device
        self.host = torch.zeros(self.entries + -(-host_words // 2), dtype=torch.int64,
                                pin_memory=device.type == "cuda")
        self.table = self.host.numpy()
        self.host_bytes = self.table[self.entries:].view(np.uint8)
        self.device = torch.zeros_like(self.host, device=device)
        self.read: torch.cuda.Event | None = None
        self.layouts: dict[tuple, tuple[bool, bool, int, int, int, int]] = {}

    def gather(self) -> None:
        """Queued on the current stream (and so captured with the graph): the table to the device, then the gather."""
        self.device.copy_(self.host, non_blocking=True)
        _gather_kernel[(len(self.targets), PROGRAMS)](self.device, BLOCK=BLOCK)

    def write(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The table for ``inputs`` (each on the targets' device, or on the host, for the leading corner of its target);
        returns the tensors on the device that the gather will read, which must live until it has run. An input's
        layout is worked out once per (shape, strides, dtype, device): at batch 1 doing it each call cost as much host
        time as the copies it replaces."""
        if self.read is not None:
            self.read.synchronize()  # the last replay has copied the table
        entries, reads = [], []
        host_at = 0
        for name, target in self.targets.items():
            value = inputs[name]
            key = (name, value.shape, value.stride(), value.dtype, value.device)
            layout = self.layouts.get(key)
            if layout is None:
                layout = self.layouts[key] = self._layout(value, target)
            on_host, convert, rows, words, source_stride, target_stride = layout
            if convert:  # another dtype (the gather moves bits), or rows that are not evenly spaced
                value = value.to(target.dtype).contiguous()
            if on_host:
                data = value.numpy().view(np.uint8).reshape(-1)
                if host_at + data.size > self.host_bytes.size:
                    raise ValueError(f"the host inputs exceed the table's {self.host_bytes.size} bytes for them")
                self.host_bytes[host_at:host_at + data.size] = data
                source = self.device.data_ptr() + 8 * self.entries + host_at
                host_at += -(-data.size // 8) * 8
            else:
                source = value.data_ptr()
                if source % 4:  # a view that starts mid-word: read a copy instead, which starts on an allocation
                    value, rows, words, source_stride, target_stride = row_layout(
                        value.clone(memory_format=torch.contiguous_format), target.shape)
                    source = value.data_ptr()
                reads.append(value)
            entries += (source, target.data_ptr(), rows, words, source_stride, target_stride)
        self.table[:self.entries] = entries
        return reads

    @staticmethod
    def _layout(value: torch.Tensor, target: torch.Tensor) -> tuple[bool, bool, int, int, int, int]:
        """(on the host, converted to a contiguous tensor of the target's dtype first, then ``row_layout``'s numbers)."""
        on_host = value.device != target.device
        converted = value.to(target.dtype).contiguous() if on_host or value.dtype != target.dtype else value
        laid, rows, words, source_stride, target_stride = row_layout(converted, target.shape)
        convert = converted is not value or laid is not value
        return on_host, convert, rows, words, source_stride, target_stride
