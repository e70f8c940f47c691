"""A fully connected layer whose CPU inference runs through oneDNN.

On a CPU, PyTorch's float32 `F.linear` is MKL's sgemm, and MKL runs its AVX2 code on AMD processors (it
picks its AVX-512 kernels by the vendor): on this project's 2-core AMD EPYC machines the heads' large
fcs (300 RoIs x 50,176 -> 256, 300 x 12,544 -> 512) reach ~200 GFLOP/s there and ~460 through oneDNN
(`benchmarks/README.md`, "fully connected layers"). oneDNN's float32 matmul is the same product in
another summation order (differences ~1e-6).

Only inference takes the oneDNN path (no autograd graph needed, float32, no CPU autocast, which would run
the layer in bfloat16): training, other devices and other dtypes stay `F.linear`. Parameters and
state-dict keys are nn.Linear's, so checkpoints load either way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN_LINEAR = _onednn_linear_available()


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether `linear` below takes the oneDNN path for this input."""
    return (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.ndim == 2 and x.shape[0] > 0 and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool = False) -> Tensor:
    """F.linear (then ReLU when `relu`), through oneDNN on a CPU without autograd; x (M, in) -> (M, out)."""
    if uses_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out


class Linear(nn.Linear):
    """nn.Linear whose CPU inference forward goes through oneDNN (module doc); `relu=True` fuses a ReLU."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, relu: bool = False) -> None:
        super().__init__(in_features, out_features, bias)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.relu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")
