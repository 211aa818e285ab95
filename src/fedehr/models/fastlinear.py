"""Affine layers for the CPU sampling paths: oneDNN's linear kernel where it is usable, F.linear elsewhere.

On the CPUs we measured (AMD EPYC, where MKL takes its generic path) oneDNN runs the skinny per-hour layers of
the samplers (batch of a few hundred rows, 16-192 columns) 2-3× faster than F.linear / addmm.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

Affine = tuple[torch.Tensor, torch.Tensor]  # a linear layer's (weight (out, in), bias (out,))


@functools.cache
def onednn_available() -> bool:
    """Whether torch's oneDNN linear kernel is usable here (checked once against F.linear)."""
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(64, 16, generator=g), torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
        got = torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
        return bool(torch.backends.mkldnn.is_available() and torch.allclose(got, F.linear(x, w, b).relu(), atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def linear(x: torch.Tensor, layer: Affine, relu: bool = False) -> torch.Tensor:
    """x (..., in) → (..., out), optionally ReLU'd: oneDNN on float32 CPU tensors when available, else F.linear."""
    w, b = layer
    if w.shape[0] == 0:
        return x.new_empty((*x.shape[:-1], 0))
    if x.device.type == "cpu" and x.dtype == torch.float32 and w.is_contiguous() and onednn_available():
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), w, b, "relu" if relu else "none", [], "")
    y = F.linear(x, w, b)
    return y.relu_() if relu else y


@functools.cache
def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bfloat16 dot products (x86 AVX512-BF16 or AMX-BF16), from /proc/cpuinfo's flags
    (``cpuinfo`` given: that text). Elsewhere torch emulates bfloat16 products, slower than float32 ones."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return False
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})
