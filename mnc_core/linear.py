"""A fully connected layer whose float32 CPU work runs through oneDNN where that is faster.

On a CPU, PyTorch's float32 `F.linear` and its backward are MKL's sgemm, and MKL runs its AVX2 code on
AMD processors (it picks its AVX-512 kernels by the vendor), while oneDNN, also inside PyTorch, runs
AVX-512 where the CPU has it. So on a CPU with AVX-512 the heads' large fcs go through oneDNN; on one
without it both libraries run AVX2 and oneDNN is not faster (slower in some rows), so the default is
`F.linear` there (`onednn_preferred`; figures in benchmarks/README.md, "Fully connected layers through
oneDNN"). oneDNN's float32 matmul is the same product in another summation order (the results differ by
float32 rounding).

The oneDNN path is taken for float32 2-D inputs on a CPU without CPU autocast (which runs the layer in
bfloat16) and outside torch.compile (which makes its own choice for F.linear); with autograd, through a
small autograd.Function whose backward is two more oneDNN products (first derivatives only). Other devices
and dtypes stay `F.linear`. Parameters and state-dict keys are nn.Linear's, so checkpoints load either way.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN_LINEAR = _onednn_linear_available()
# oneDNN's own instruction-set cap (its documented environment variables): below AVX-512 it runs AVX2 code
_AVX512_ISAS = ("AVX512", "AVX10", "AMX", "ALL")


def onednn_preferred(cpu_capability: str | None = None, environ=os.environ) -> bool:
    """Whether fcs go through oneDNN by default: only where oneDNN can run AVX-512, i.e. the CPU has it
    (PyTorch's own dispatch says AVX512) and ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA do not cap it lower."""
    capability = torch.backends.cpu.get_cpu_capability() if cpu_capability is None else cpu_capability
    if not ONEDNN_LINEAR or not capability.upper().startswith("AVX512"):
        return False
    cap = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return cap.startswith(_AVX512_ISAS)


ONEDNN_PREFERRED = onednn_preferred()


def uses_onednn(x: Tensor, weight: Tensor, onednn: bool | None = None) -> bool:
    """Whether `linear` below takes the oneDNN path for this input (onednn: None = this CPU's default,
    ONEDNN_PREFERRED; True = wherever oneDNN can run it; False = never)."""
    wanted = ONEDNN_PREFERRED if onednn is None else onednn
    return (wanted and ONEDNN_LINEAR and x.device.type == "cpu" and weight.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.ndim == 2 and x.shape[0] > 0 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())  # inductor lowers this op only for constant weights


def _product(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool = False) -> Tensor:
    """x (M, in) @ weight (out, in)^T [+ bias] [-> ReLU] by oneDNN; `weight` may be a strided view."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "relu" if relu else "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """y = [ReLU](x W^T + b); backward: dx = dz W, dW = dz^T x, db = sum dz (dz: dy through the ReLU)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        out = _product(x, weight, bias, relu)
        ctx.save_for_backward(x, weight, out if relu else None)
        ctx.relu = relu
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight, out = ctx.saved_tensors
        if ctx.relu:
            grad_out = grad_out * (out > 0)
        grad_out = grad_out.contiguous()
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_x = _product(grad_out, weight.t(), None) if needs_x else None  # (M, out) @ (out, in)
        grad_weight = _product(grad_out.t(), x.t(), None) if needs_weight else None  # (out, M) @ (M, in)
        grad_bias = grad_out.sum(0) if needs_bias else None
        return grad_x, grad_weight, grad_bias, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool = False, onednn: bool | None = None) -> Tensor:
    """F.linear (then ReLU when `relu`), through oneDNN for float32 on a CPU where `uses_onednn` says so;
    x (M, in) -> (M, out)."""
    if uses_onednn(x, weight, onednn):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _OneDnnLinear.apply(x, weight, bias, relu)
        return _product(x, weight, bias, relu)
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out


class Linear(nn.Linear):
    """nn.Linear whose float32 CPU work goes through oneDNN where this CPU prefers it (module doc); `relu=True`
    fuses a ReLU."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, relu: bool = False,
                 onednn: bool | None = None) -> None:
        super().__init__(in_features, out_features, bias)
        self.relu = relu
        self.onednn = onednn  # None: this CPU's default (ONEDNN_PREFERRED)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.relu, self.onednn)

    def extra_repr(self) -> str:
        return (super().extra_repr() + (", relu=True" if self.relu else "")
                + ("" if self.onednn is None else f", onednn={self.onednn}"))
