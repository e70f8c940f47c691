"""CUDA path: training with autocast and inference on the GPU (skipped without CUDA)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mnc_core import Predictor, train_model

from test_mnc_helpers import ShapesDataset, mask_ap50, small_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


def test_cuda_train_and_predict():
    ds = ShapesDataset(3, size=(128, 160))
    cfg = small_config(optimizer="adamw", min_size=128, max_size=160)
    model, summary = train_model(ds, cfg, iterations=200, lr=1e-3, device="cuda", backbone_weights="none")
    assert summary["device"].startswith("cuda") and summary["skipped_steps"] == 0
    assert next(model.parameters()).is_cuda
    pred = Predictor(model, cfg, ds.categories, "cuda")
    preds = [pred(s.image) for s in ds.samples]
    assert all(i.mask.dtype == np.bool_ and i.mask.shape == (128, 160) for p in preds for i in p)
    assert mask_ap50(ds, preds) >= 0.9


def test_cuda_roi_warp_matches_cpu():
    from mnc_core.roi_warp import roi_warp
    f = torch.randn(2, 8, 12, 14, dtype=torch.float64)
    b = torch.tensor([[0, 10.3, 12.1, 80.7, 70.2], [1, 20.1, 30.3, 90.7, 81.9]], dtype=torch.float64)
    cpu = roi_warp(f, b, 7, 1 / 8)
    gpu = roi_warp(f.cuda(), b.cuda(), 7, 1 / 8).cpu()
    torch.testing.assert_close(cpu, gpu)


def test_cuda_paste_matches_the_cpu_paste():
    """The GPU path of the post-processing (all survivors pasted at once) against the CPU's one-by-one paste."""
    from mnc_core.postprocess import paste_windows, paste_windows_one_by_one
    from test_postprocess import assert_same_paste, soft_masks_and_windows

    soft, windows, shape = soft_masks_and_windows(0)
    gpu = paste_windows(soft.cuda(), windows.cuda(), shape, 0.4)
    assert_same_paste(tuple(t.cpu() for t in gpu), paste_windows_one_by_one(soft, windows, shape, 0.4))
