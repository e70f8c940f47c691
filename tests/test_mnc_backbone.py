"""Backbones: the contract (levels, strides, channels) of both, single-scale and pyramid; weights: explicit random
init, a local state-dict path, the clear offline error."""
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
from mnc_core.config import MNCConfig

from test_mnc_helpers import ShapesDataset, small_config

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenet_v2-b0353104.pth"


def single_scale(name: str, channels: int, weights, frozen_blocks: int | None = None, **config):
    """MNC's single-scale backbone (one stride-16 map, "p4") as a config builds it."""
    return build_backbone(MNCConfig(backbone=name, feature_channels=channels, feature_pyramid=False,
                                    backbone_frozen_blocks=frozen_blocks, **config), weights)


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
    b = single_scale("mobilenet_v2", 32, "none", frozen_blocks=3, mobilenet_dilated=dilated)
    out = b(torch.randn(1, 3, 96, 128))["p4"]
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
    b = single_scale("resnet50", 16, str(tmp_path / "r50.pth"), frozen_blocks=2)
    x = torch.randn(1, 3, 64, 96)
    y = ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
    torch.testing.assert_close(b.body(x), y, rtol=1e-3, atol=1e-3 * y.abs().max().item())
    assert b(x)["p4"].shape == (1, 16, 4, 6)
    assert all(not p.requires_grad for p in b.body[1].parameters())  # stem + layer1 frozen
    assert all(p.requires_grad for p in b.body[3].parameters())


def test_weights_from_a_path(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.mobilenet_v2()
    path = tmp_path / "mnv2.pth"
    torch.save(ref.state_dict(), path)
    b = single_scale("mobilenet_v2", 32, str(path))
    x = torch.randn(1, 3, 64, 80)
    # the body computes exactly torchvision's (eval-mode BN) features up to stride 16
    torch.testing.assert_close(b.body(x), ref.eval().features[:14](x), rtol=1e-4, atol=1e-4)
    # a wrapped state dict ({"state_dict": ...}) also loads; a wrong file is a clear error
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "wrapped.pth")
    single_scale("mobilenet_v2", 32, str(tmp_path / "wrapped.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        single_scale("mobilenet_v2", 32, str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(ValueError, match="junk.pth"):
        single_scale("mobilenet_v2", 32, str(tmp_path / "junk.pth"))


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason=f"ImageNet weights not present at {SHARED_WEIGHTS}")
def test_shared_imagenet_weights_load():
    b = single_scale("mobilenet_v2", 32, str(SHARED_WEIGHTS))
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
        single_scale("mobilenet_v2", 32, None)
    assert time.perf_counter() - t < 3


def test_cached_weights_are_used_offline(offline):
    """Default weights work offline once torchvision's cache holds the file."""
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    ckpt.mkdir(parents=True)
    if SHARED_WEIGHTS.exists():
        (ckpt / SHARED_WEIGHTS.name).symlink_to(SHARED_WEIGHTS)
        b = single_scale("mobilenet_v2", 32, None)
        assert b(torch.randn(1, 3, 64, 64))["p4"].shape == (1, 32, 4, 4)
    else:
        pytest.skip(f"ImageNet weights not present at {SHARED_WEIGHTS}")


def _conv_params(*modules) -> int:
    """Parameters of the convolutions in torchvision modules once their BatchNorm is folded in: each conv's
    weight plus a bias per output channel."""
    return sum(m.weight.numel() + m.out_channels for module in modules for m in module.modules()
               if isinstance(m, torch.nn.Conv2d))


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet_v2"])
def test_default_fine_tuning_trains_what_detectron_trains(backbone):
    """Default MNCConfig: ResNet-50 fine-tunes from res3 on (layer2 and layer3 of its C4 body; stem and
    layer1 frozen), MobileNetV2 from `features[4]` on; the 1x1 reduction and the heads always train."""
    torch.manual_seed(0)
    cfg = small_config(backbone=backbone, backbone_frozen_blocks=None, feature_pyramid=False)
    model = build_model(cfg, 2, backbone_weights="none")
    ref = getattr(torchvision.models, backbone)()
    if backbone == "resnet50":
        expected, frozen = _conv_params(ref.layer2, ref.layer3), _conv_params(ref.conv1, ref.layer1)
        assert model.backbone.frozen_blocks == 2
    else:
        expected, frozen = _conv_params(*ref.features[4:14]), _conv_params(*ref.features[:4])
        assert model.backbone.frozen_blocks == 4
    body = model.backbone.body
    assert _trainable(body) == expected > 500_000
    assert sum(p.numel() for p in body.parameters()) == expected + frozen
    assert _trainable(model.backbone.reduce) == sum(p.numel() for p in model.backbone.reduce.parameters())
    assert _trainable(model) == _trainable(body) + sum(p.numel() for n, p in model.named_parameters()
                                                       if not n.startswith("backbone.body."))


def test_frozen_blocks_split_the_forward_pass_exactly():
    torch.manual_seed(0)
    b = single_scale("mobilenet_v2", 16, "none", frozen_blocks=7)
    x = torch.randn(1, 3, 64, 96)
    frozen = b.frozen(x)
    assert list(frozen) == ["x"]  # no tap inside the frozen blocks
    assert frozen["x"].shape == (1, 32, 8, 12) and not frozen["x"].requires_grad  # features[7] starts at stride 8
    torch.testing.assert_close(b.from_frozen(frozen), b(x))
    assert _trainable(b.body[:7]) == 0 and _trainable(b.body[7:]) == sum(p.numel() for p in b.body[7:].parameters())
    b.set_frozen_blocks(99)  # everything frozen: `frozen` is the whole body
    assert b.frozen_blocks == 14 and _trainable(b.body) == 0
    torch.testing.assert_close(b.from_frozen(b.frozen(x)), b(x))


def test_mobilenet_expansion_ends_at_block_14s_expansion_like_ssdlite(tmp_path):
    """mobilenet_expansion: the body ends with block 14's 1x1 expansion (576 channels, ReLU6) at stride 16,
    where SSDLite attaches (MobileNetV2 paper, sec. 6.2); its frozen BN is folded exactly."""
    from mnc_core.backbone import body_blocks

    torch.manual_seed(3)
    ref = torchvision.models.mobilenet_v2().eval()
    torch.save(ref.state_dict(), tmp_path / "mnv2.pth")
    b = single_scale("mobilenet_v2", 16, str(tmp_path / "mnv2.pth"), frozen_blocks=99, mobilenet_expansion=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y = ref.features[14].conv[0](ref.features[:14](x))
    assert y.shape == (1, 576, 4, 6) and b.num_blocks == body_blocks(MNCConfig(feature_pyramid=False, mobilenet_expansion=True)) == 15
    torch.testing.assert_close(b.body(x), y, rtol=1e-3, atol=1e-3 * y.abs().max().item())
    assert b(x)["p4"].shape == (1, 16, 4, 6) and b.frozen_blocks == 15
    cfg = small_config(mobilenet_expansion=True, feature_pyramid=False)
    assert cfg.architecture()["mobilenet_expansion"] is True
    with pytest.raises(ValueError, match="exclude"):
        small_config(mobilenet_expansion=True, mobilenet_dilated=True, feature_pyramid=False)
    with pytest.raises(ValueError, match="single-scale"):
        small_config(mobilenet_expansion=True)


@pytest.mark.parametrize("backbone,channels", [("mobilenet_v2", (24, 32, 96, 320)), ("resnet50", (256, 512, 1024, 2048))])
@pytest.mark.parametrize("levels", [(3, 4, 5), (2, 3, 4, 5)])
def test_pyramid_backbone_contract(backbone, channels, levels):
    """Both backbones give the pyramid as the contract says: one map per level plus a max-pooled one, finest first,
    each of `feature_channels` at its stride; the taps are the body's stage outputs of the documented channels."""
    from mnc_core.backbone import PYRAMID_TAPS, body_blocks

    torch.manual_seed(0)
    config = MNCConfig(backbone=backbone, feature_channels=24, pyramid_levels=levels, backbone_frozen_blocks=0)
    b = build_backbone(config, "none")
    x = torch.randn(1, 3, 128, 192)
    out = b(x)
    names = [f"p{k}" for k in (*levels, max(levels) + 1)]
    assert list(out) == names == list(b.strides)
    assert b.roi_levels == names[:-1]
    for name, value in out.items():
        stride = b.strides[name]
        assert stride == 2 ** int(name[1:])
        assert value.shape == (1, 24, -(-128 // stride), -(-192 // stride))
    assert [PYRAMID_TAPS[backbone][k][1] for k in (2, 3, 4, 5)] == list(channels)
    assert b.num_blocks == body_blocks(config)
    # the taps are what the body's blocks output, of the listed channels
    taps = {}
    b._run(x, 0, b.num_blocks, taps)
    assert [t.shape[1] for t in taps.values()] == [PYRAMID_TAPS[backbone][k][1] for k in levels]


def test_pyramid_frozen_split_is_exact_and_caches_every_tap():
    """The heads mode caches the frozen blocks' output: with the whole body frozen it is every tapped level (no
    "x"); with part of it, the taps inside plus the boundary; either way from_frozen equals the full pass."""
    torch.manual_seed(0)
    b = build_backbone(MNCConfig(feature_channels=16, backbone_frozen_blocks=99), "none")
    x = torch.randn(1, 3, 64, 96)
    frozen = b.frozen(x)
    assert sorted(frozen) == ["p3", "p4", "p5"] and b.frozen_blocks == 18
    full = b(x)
    for name, value in b.from_frozen(frozen).items():
        torch.testing.assert_close(value, full[name])
    b.set_frozen_blocks(10)  # p3 (block 6) inside, p4 and p5 after the boundary
    frozen = b.frozen(x)
    assert sorted(frozen) == ["p3", "x"]
    for name, value in b.from_frozen(frozen).items():
        torch.testing.assert_close(value, full[name])
    assert _trainable(b.fpn) == sum(p.numel() for p in b.fpn.parameters()) > 0
