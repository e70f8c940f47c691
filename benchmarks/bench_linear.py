#!/usr/bin/env python
"""The heads' fully connected layers on a CPU: PyTorch's F.linear (MKL) against oneDNN (mnc_core/linear.py),
forward and backward, at the shapes MNC runs them.

    python benchmarks/bench_linear.py --json benchmarks/out/linear_cpu.json

Shapes: the mask head's fc (K RoIs x 50,176 -> 256; 50,176 = 256 channels x 14 x 14) and a categorise-head
pathway fc (K x 12,544 -> 512), at K = 300 (inference, stages 2-3), 100 (stages 4-5) and 32 (a training
image's RoIs). For each: the median of `--repeats` timings of the forward (no autograd) and of forward +
backward (dx, dW, db), and the largest difference of the outputs and gradients between the two paths.
Prints which path the product takes by default on this CPU (`mnc_core.linear.ONEDNN_PREFERRED`). Needs no data.

An AVX2-only CPU, imitated on one with AVX-512 (each library held to AVX2 by its own switch, PyTorch's
dispatch too):

    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_linear.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import cpu_name, loadavg, stamp, write_json
from mnc_core.linear import ONEDNN_LINEAR, ONEDNN_PREFERRED, linear

SHAPES = [(300, 50176, 256), (300, 12544, 512), (100, 50176, 256), (100, 12544, 512), (32, 50176, 256),
          (32, 12544, 512)]


def median_ms(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not ONEDNN_LINEAR:
        raise SystemExit("this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise): nothing to compare")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    capability = torch.backends.cpu.get_cpu_capability()
    default = "oneDNN" if ONEDNN_PREFERRED else "MKL (F.linear)"
    print(f"{stamp()}; {cpu_name()}, {args.threads} threads; load {loadavg()}; PyTorch's CPU capability "
          f"{capability}, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}; the product's default: {default}")
    print("| RoIs x in -> out | forward MKL ms | forward oneDNN ms | GFLOP/s MKL / oneDNN | fwd+bwd MKL ms | fwd+bwd oneDNN ms | max diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for rois, n_in, n_out in SHAPES:
        x = torch.randn(rois, n_in).requires_grad_(True)
        weight = (torch.randn(n_out, n_in) * n_in ** -0.5).requires_grad_(True)
        bias = torch.zeros(n_out, requires_grad=True)
        upstream = torch.randn(rois, n_out)

        def plain_train():
            F.relu(F.linear(x, weight, bias)).mul(upstream).sum().backward()

        def onednn_train():
            linear(x, weight, bias, relu=True, onednn=True).mul(upstream).sum().backward()

        with torch.no_grad():
            forward_mkl = median_ms(lambda: F.relu(F.linear(x, weight, bias)), args.repeats)
            forward_onednn = median_ms(lambda: linear(x, weight, bias, relu=True, onednn=True), args.repeats)
            difference = (linear(x, weight, bias, relu=True, onednn=True)
                          - F.relu(F.linear(x, weight, bias))).abs().max().item()
        train_mkl = median_ms(plain_train, args.repeats)
        train_onednn = median_ms(onednn_train, args.repeats)
        grads = []
        for step in (plain_train, onednn_train):
            for t in (x, weight, bias):
                t.grad = None
            step()
            grads.append([t.grad.clone() for t in (x, weight, bias)])
        difference = max([difference] + [(a - b).abs().max().item() for a, b in zip(*grads)])
        gflop = 2 * rois * n_in * n_out / 1e9
        row = {"rois": rois, "in": n_in, "out": n_out, "forward_mkl_ms": forward_mkl,
               "forward_onednn_ms": forward_onednn, "train_mkl_ms": train_mkl, "train_onednn_ms": train_onednn,
               "max_difference": difference}
        rows.append(row)
        print(f"| {rois} x {n_in:,} -> {n_out} | {forward_mkl:.2f} | {forward_onednn:.2f} | "
              f"{gflop / forward_mkl * 1000:.0f} / {gflop / forward_onednn * 1000:.0f} | {train_mkl:.2f} | "
              f"{train_onednn:.2f} | {difference:.1e} |")
    if args.json:
        write_json(args.json, {"when": stamp(), "cpu": cpu_name(), "threads": args.threads, "load": loadavg(),
                               "cpu_capability": capability, "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                               "default": default, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
