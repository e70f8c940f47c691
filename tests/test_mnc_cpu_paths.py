"""The heads' CPU paths: fully connected layers through oneDNN, forward and backward (mnc_core/linear.py), and
the stage-3 masking + pooling a few RoIs at a time over the threads (mnc_core/heads.py): the same results as
the plain PyTorch ops, and the fast paths really taken where they should be."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnc_core.heads import ClassifyHead, MaskHead
from mnc_core.linear import ONEDNN_LINEAR, ONEDNN_PREFERRED, Linear, linear, onednn_preferred, uses_onednn
from mnc_core.roi_warp import max_pool_2x2


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_onednn_is_available_in_the_pinned_torch():
    """The speed of CPU inference rests on it (benchmarks/README.md); a torch without it falls back silently,
    so this says so loudly instead."""
    assert ONEDNN_LINEAR


def test_fcs_go_through_onednn_by_default_only_where_it_can_run_avx512():
    """On an AVX2-only CPU oneDNN is not faster than F.linear (benchmarks/README.md), so the default is F.linear
    there; its own instruction-set cap (ONEDNN_MAX_CPU_ISA) counts as the CPU's."""
    assert onednn_preferred("AVX512", {}) and onednn_preferred("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})
    assert not onednn_preferred("AVX2", {}) and not onednn_preferred("DEFAULT", {})
    assert not onednn_preferred("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not onednn_preferred("AVX512", {"DNNL_MAX_CPU_ISA": "avx2_vnni"})
    x, weight = torch.randn(4, 8), torch.randn(3, 8)
    assert uses_onednn(x, weight) == ONEDNN_PREFERRED == onednn_preferred()
    assert uses_onednn(x, weight, onednn=True) and not uses_onednn(x, weight, onednn=False)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_onednn_linear_equals_f_linear(relu, with_bias):
    torch.manual_seed(0)
    layer = Linear(300, 70, bias=with_bias, relu=relu)
    x = torch.randn(37, 300)
    expected = F.linear(x, layer.weight, layer.bias)
    expected = F.relu(expected) if relu else expected
    with torch.no_grad():
        assert uses_onednn(x, layer.weight, onednn=True)  # on every CPU, whatever its default
        out = linear(x, layer.weight, layer.bias, relu, onednn=True)
        strided = linear(torch.randn(300, 37).t(), layer.weight, layer.bias, relu, onednn=True)  # non-contiguous
        default = layer(x)  # this CPU's default path
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(default, expected, atol=1e-5, rtol=1e-5)
    assert strided.shape == (37, 70)
    if relu:
        assert (out >= 0).all() and (out == 0).any()


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("needs", ["all", "weights only", "input only"])
def test_onednn_linear_gradients_equal_f_linears(relu, needs):
    """Training takes the oneDNN path too (its own backward): the same outputs and gradients as F.linear."""
    torch.manual_seed(0)
    x = torch.randn(9, 40, requires_grad=needs != "weights only")
    weight = torch.randn(6, 40, requires_grad=needs != "input only")
    bias = torch.randn(6, requires_grad=needs != "input only")
    upstream = torch.randn(9, 6)
    assert uses_onednn(x, weight, onednn=True)
    out = linear(x, weight, bias, relu, onednn=True)
    (out * upstream).sum().backward()
    got = [t.grad for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    expected = F.linear(x, weight, bias)
    expected = F.relu(expected) if relu else expected
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for grad, tensor in zip(got, (x, weight, bias)):
        if tensor.requires_grad:
            torch.testing.assert_close(grad, tensor.grad, atol=1e-5, rtol=1e-5)
            assert grad.abs().sum() > 0
        else:
            assert grad is None


def test_autocast_other_dtypes_and_empty_inputs_take_f_linear():
    torch.manual_seed(0)
    layer = Linear(16, 8, relu=True)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert not uses_onednn(torch.zeros(0, 16), layer.weight, onednn=True)
        assert layer(torch.zeros(0, 16)).shape == (0, 8)
        assert not uses_onednn(x.double(), layer.weight.double(), onednn=True)
        assert not uses_onednn(x[None], layer.weight, onednn=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not uses_onednn(x, layer.weight, onednn=True)
            assert layer(x).dtype == torch.bfloat16  # autocast still runs the layer in bfloat16
    assert linear(x, layer.weight, None).shape == (5, 8)


def test_linear_state_dict_is_nn_linears():
    plain = torch.nn.Linear(6, 4)
    fast = Linear(6, 4, relu=True)
    fast.load_state_dict(plain.state_dict())
    assert set(fast.state_dict()) == {"weight", "bias"}
    with torch.no_grad():
        torch.testing.assert_close(fast(torch.ones(2, 6)), F.relu(plain(torch.ones(2, 6))))


@pytest.mark.parametrize("rois", [1, 15, 16, 17, 41])
def test_heads_inference_equals_the_autograd_path(rois, two_threads):
    """Eval-mode heads without autograd (masking + pooling in chunks over 2 threads) give the values of the
    same heads with autograd on (one-shot masking and pooling; the fcs' two paths are compared above)."""
    torch.manual_seed(1)
    mask_head = MaskHead(8, 14, 32, 28).eval()
    classify_head = ClassifyHead(8, 14, 24, 20, num_classes=5).eval()
    x = torch.randn(rois, 8, 14, 14)
    x_grad = x.clone().requires_grad_(True)
    mask_logits = mask_head(x_grad)
    reference = classify_head(x_grad, torch.sigmoid(mask_logits))
    with torch.inference_mode():
        fast_logits = mask_head(x)
        fast = classify_head(x, torch.sigmoid(fast_logits))
    torch.testing.assert_close(fast_logits, mask_logits.detach(), atol=1e-5, rtol=1e-5)
    for got, want in zip(fast, reference):
        torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)


def test_chunked_masking_and_pooling_are_exact(two_threads):
    from mnc_core.heads import _pooled_pathway_inputs

    torch.manual_seed(2)
    x, m = torch.randn(35, 4, 14, 14), torch.rand(35, 1, 14, 14)
    with torch.no_grad():
        masked, plain = _pooled_pathway_inputs(x, m)
    assert torch.equal(masked, F.max_pool2d(x * m, 2).flatten(1))
    assert torch.equal(plain, F.max_pool2d(x, 2).flatten(1))
    assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2))


def test_linear_compiles_with_torch_compile():
    """Inside torch.compile the layer is F.linear (inductor lowers oneDNN's linear only for constant weights:
    `weight must be a graph constant`); the compiled layer gives the eager layer's values."""
    torch.manual_seed(0)
    layer = Linear(24, 10, relu=True, onednn=True)  # the oneDNN path eagerly, on every CPU
    x = torch.randn(6, 24)
    compiled = torch.compile(layer, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), atol=1e-5, rtol=1e-5)
