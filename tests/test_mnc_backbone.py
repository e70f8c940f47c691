"""Backbone weights: explicit random init, a local state-dict path, the clear offline error; stride 16."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

import mnc_core.backbone as backbone_mod
from mnc_core import BackboneWeightsError, build_model
from mnc_core.backbone import build_backbone

from test_mnc_helpers import ShapesDataset, small_config

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenet_v2-b0353104.pth"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache and no name resolution: the weights can be neither cached nor fetched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known (test: offline)")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert torch.hub.get_dir().startswith(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("dilated", [False, True])
def test_random_init_mobilenet_is_stride_16_with_frozen_bn(dilated):
    torch.manual_seed(0)
    b = build_backbone("mobilenet_v2", 32, "none", dilated=dilated, frozen_blocks=3)
    out = b(torch.randn(1, 3, 96, 128))
    assert out.shape == (1, 32, 6, 8)
    # BN is frozen and folded into the convolutions: nothing left that could update statistics
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)) for m in b.modules())
    assert all(not p.requires_grad for p in b.body[:3].parameters())
    assert all(p.requires_grad for p in b.body[3:].parameters())
    # random init is calibrated (frozen BN statistics), so activations neither vanish nor explode
    assert 0.05 < out.std().item() < 50


def test_resnet50_c4_from_path_matches_torchvision_at_stride_16(tmp_path):
    torch.manual_seed(2)
    ref = torchvision.models.resnet50().eval()
    torch.save(ref.state_dict(), tmp_path / "r50.pth")
    b = build_backbone("resnet50", 16, str(tmp_path / "r50.pth"), frozen_blocks=2)
    x = torch.randn(1, 3, 64, 96)
    y = ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
    torch.testing.assert_close(b.body(x), y, rtol=1e-3, atol=1e-3 * y.abs().max().item())
    assert b(x).shape == (1, 16, 4, 6)
    assert all(not p.requires_grad for p in b.body[1].parameters())  # stem + layer1 frozen
    assert all(p.requires_grad for p in b.body[3].parameters())


def test_weights_from_a_path(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.mobilenet_v2()
    path = tmp_path / "mnv2.pth"
    torch.save(ref.state_dict(), path)
    b = build_backbone("mobilenet_v2", 32, str(path))
    x = torch.randn(1, 3, 64, 80)
    # the body computes exactly torchvision's (eval-mode BN) features up to stride 16
    torch.testing.assert_close(b.body(x), ref.eval().features[:14](x), rtol=1e-4, atol=1e-4)
    # a wrapped state dict ({"state_dict": ...}) also loads; a wrong file is a clear error
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "wrapped.pth")
    build_backbone("mobilenet_v2", 32, str(tmp_path / "wrapped.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("mobilenet_v2", 32, str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(ValueError, match="junk.pth"):
        build_backbone("mobilenet_v2", 32, str(tmp_path / "junk.pth"))


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason=f"ImageNet weights not present at {SHARED_WEIGHTS}")
def test_shared_imagenet_weights_load():
    b = build_backbone("mobilenet_v2", 32, str(SHARED_WEIGHTS))
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(SHARED_WEIGHTS, weights_only=True))
    x = torch.randn(1, 3, 64, 80)
    torch.testing.assert_close(b.body(x), ref.eval().features[:14](x), rtol=1e-4, atol=1e-4)


def test_default_weights_offline_raise_a_clear_error(offline):
    t = time.perf_counter()
    with pytest.raises(BackboneWeightsError) as e:
        build_model(small_config(), 2, backbone_weights=None)
    msg = str(e.value)
    assert "backbone_weights" in msg and "'none'" in msg and "mobilenet_v2" in msg
    assert time.perf_counter() - t < 30


def test_default_weights_offline_error_through_train_model(offline):
    from mnc_core import train_model
    with pytest.raises(BackboneWeightsError, match="backbone_weights"):
        train_model(ShapesDataset(1), small_config(), iterations=1)


def test_hanging_download_is_guarded(offline, monkeypatch):
    monkeypatch.setattr(backbone_mod, "DOWNLOAD_TIMEOUT_S", 0.5)
    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: time.sleep(5))
    t = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match="did not finish"):
        build_backbone("mobilenet_v2", 32, None)
    assert time.perf_counter() - t < 3


def test_cached_weights_are_used_offline(offline):
    """Default weights work offline once torchvision's cache holds the file."""
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    ckpt.mkdir(parents=True)
    if SHARED_WEIGHTS.exists():
        (ckpt / SHARED_WEIGHTS.name).symlink_to(SHARED_WEIGHTS)
        b = build_backbone("mobilenet_v2", 32, None)
        assert b(torch.randn(1, 3, 64, 64)).shape == (1, 32, 4, 4)
    else:
        pytest.skip(f"ImageNet weights not present at {SHARED_WEIGHTS}")
