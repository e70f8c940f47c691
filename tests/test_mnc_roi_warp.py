"""roi_warp: gradcheck (features and box coordinates) and equality with roi_align for inside boxes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from mnc_core.roi_warp import roi_warp, roi_warp_pooled


def _inside_boxes(dtype=torch.float64) -> torch.Tensor:
    # feature map 12 x 14 at stride 8 -> image 96 x 112; coordinates chosen off the sample-grid
    return torch.tensor([[0, 10.3, 12.1, 80.7, 70.2],
                         [1, 20.1, 30.3, 90.7, 81.9],
                         [0, 40.2, 40.6, 100.3, 85.1],
                         [1, 9.7, 8.9, 30.2, 25.4]], dtype=dtype)


@pytest.mark.parametrize("size", [5, 7, 8])
def test_forward_matches_roi_align_inside_the_map(size):
    torch.manual_seed(0)
    f = torch.randn(2, 3, 12, 14, dtype=torch.float64)
    b = _inside_boxes()
    ref = roi_align(f, b, size, 1 / 8, sampling_ratio=1, aligned=True)
    out = roi_warp(f.requires_grad_(True), b, size, 1 / 8).detach()  # the differentiable (grid_sample) path
    assert out.shape == (4, 3, size, size)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_forward_matches_roi_align_float32_single_image_many_boxes():
    torch.manual_seed(1)
    f = torch.randn(1, 16, 20, 24)
    xy = torch.rand(50, 2) * torch.tensor([150.0, 120.0]) + 10
    wh = torch.rand(50, 2) * 60 + 4
    b = torch.cat([torch.zeros(50, 1), xy, (xy + wh).clamp(max=torch.tensor([23 * 8.0, 19 * 8.0]))], 1)
    ref = roi_align(f, b, 14, 1 / 8, sampling_ratio=1, aligned=True)
    torch.testing.assert_close(roi_warp(f.requires_grad_(True), b, 14, 1 / 8).detach(), ref, rtol=1e-4, atol=1e-5)


def test_pooled_equals_warp_then_maxpool():
    torch.manual_seed(2)
    f = torch.randn(2, 4, 12, 14)
    b = _inside_boxes(torch.float32)
    torch.testing.assert_close(roi_warp_pooled(f, b, 8, 1 / 8), F.max_pool2d(roi_warp(f, b, 8, 1 / 8), 2))


def test_boxes_outside_map_differ_from_roi_align_only_by_padding_convention():
    f = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    b = torch.tensor([[0, -40.0, -40.0, 24.0, 24.0]], dtype=torch.float64)  # mostly outside
    out = roi_warp(f, b, 4, 1 / 8)
    assert out[0, 0, 0, 0] == 0.0 and out[0, 0, -1, -1] == 1.0  # zero padding far outside, 1 inside


def test_gradcheck_features():
    torch.manual_seed(3)
    f = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    b = _inside_boxes()[:, :] * torch.tensor([1, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: roi_warp(x, b, 4, 1 / 8), (f,))


def test_gradcheck_boxes():
    torch.manual_seed(4)
    f = torch.randn(2, 2, 12, 14, dtype=torch.float64)
    b = _inside_boxes()
    coords = b[:, 1:].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: roi_warp(f, torch.cat([b[:, :1], c], 1), 5, 1 / 8), (coords,))
    # the box gradient is real (non-zero), which roi_align cannot provide
    out = roi_warp(f, torch.cat([b[:, :1], coords], 1), 5, 1 / 8)
    (g,) = torch.autograd.grad(out.square().sum(), coords)
    assert g.abs().sum() > 0


def test_gradcheck_pooled_boxes():
    torch.manual_seed(5)
    f = torch.randn(1, 2, 12, 14, dtype=torch.float64)
    b = _inside_boxes()[[0, 2]]
    b[:, 0] = 0
    coords = b[:, 1:].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: roi_warp_pooled(f, torch.cat([b[:, :1], c], 1), 6, 1 / 8), (coords,))


def test_empty_boxes():
    f = torch.randn(1, 3, 5, 5)
    assert roi_warp(f, torch.zeros(0, 5), 4, 1.0).shape == (0, 3, 4, 4)


def test_sampling_grid_and_warp_stay_float32_under_autocast():
    """Under bf16 autocast (what training and inference use on a GPU) the grid is computed and sampled in
    float32: the same grid as without autocast to 1e-3 of a feature pixel, the same warp and box gradient."""
    from mnc_core.roi_warp import _sampling_grid, sampling_grid

    H, W, P, scale = 48, 64, 28, 1 / 16
    boxes = torch.tensor([[53.3, 65.7, 926.1, 651.9], [0.0, 0.0, 1008.0, 752.0], [500.2, 10.9, 1017.5, 700.3]])
    ref = sampling_grid(boxes, H, W, P, scale)
    to_pixels = torch.tensor([W / 2, H / 2])  # normalised grid units -> feature pixels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = sampling_grid(boxes, H, W, P, scale)
    assert grid.dtype == torch.float32
    assert float(((grid - ref) * to_pixels).abs().max()) < 1e-3
    # what a bf16 grid would be (the bug this guards against): far more than 1e-3 pixel off
    rounded = _sampling_grid(boxes.bfloat16(), H, W, P, scale).float()
    assert float(((rounded - ref) * to_pixels).abs().max()) > 0.1

    torch.manual_seed(0)
    features = torch.randn(1, 8, H, W).bfloat16().float()  # values a bf16 feature map can hold
    rois = torch.cat([torch.zeros(3, 1), boxes], 1)
    rois_ref = rois.clone().requires_grad_(True)
    out_ref = roi_warp(features, rois_ref, 7, scale)
    out_ref.square().sum().backward()
    rois_amp = rois.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_warp(features.bfloat16(), rois_amp, 7, scale)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    torch.testing.assert_close(rois_amp.grad, rois_ref.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_path_equals_the_differentiable_path(dtype):
    """Without gradients the warp runs through roi_align on a zero-ringed map: the same values as grid_sample's,
    boxes across and beyond the border included, for one and several images."""
    torch.manual_seed(7)
    features = torch.randn(2, 5, 11, 13, dtype=dtype)
    xy = torch.rand(40, 2, dtype=dtype) * 140 - 20  # some start outside the map (8 px per feature pixel)
    wh = torch.rand(40, 2, dtype=dtype) * 90 + 1
    boxes = torch.cat([torch.randint(0, 2, (40, 1)).to(dtype), xy, xy + wh], 1)
    boxes[0, 1:] = torch.tensor([-50.0, -50.0, 200.0, 200.0])  # larger than the map
    for warp, size in ((roi_warp, 7), (roi_warp_pooled, 8)):
        differentiable = warp(features.clone().requires_grad_(True), boxes, size, 1 / 8).detach()
        with torch.no_grad():
            fast = warp(features, boxes, size, 1 / 8)
        torch.testing.assert_close(fast, differentiable, atol=1e-5 if dtype == torch.float32 else 1e-10, rtol=0)
        one = warp(features[:1], boxes[boxes[:, 0] == 0], size, 1 / 8)  # a single image
        torch.testing.assert_close(one, differentiable[boxes[:, 0] == 0], atol=1e-5 if dtype == torch.float32 else 1e-10,
                                   rtol=0)


@pytest.mark.parametrize("threads", [2, 3])
def test_inference_warp_spread_over_threads_equals_one_thread(threads):
    """On a CPU the pooled inference warp shares its RoI chunks out over the intra-op threads: the same
    values as one thread, under no_grad and under inference_mode, for RoI counts around the chunk size."""
    torch.manual_seed(3)
    features = torch.randn(2, 6, 15, 17)
    before = torch.get_num_threads()
    try:
        for k in (1, 9, 17, 40):
            xy = torch.rand(k, 2) * 100
            boxes = torch.cat([torch.randint(0, 2, (k, 1)).float(), xy, xy + torch.rand(k, 2) * 60 + 2], 1)
            torch.set_num_threads(1)
            with torch.no_grad():
                one = roi_warp_pooled(features, boxes, 8, 1 / 8)
            torch.set_num_threads(threads)
            with torch.no_grad():
                spread = roi_warp_pooled(features, boxes, 8, 1 / 8)
            with torch.inference_mode():
                spread_inference = roi_warp_pooled(features, boxes, 8, 1 / 8)
            assert one.shape == (k, 6, 4, 4)
            assert torch.equal(spread, one) and torch.equal(spread_inference, one)
    finally:
        torch.set_num_threads(before)
