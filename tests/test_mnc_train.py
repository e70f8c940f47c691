"""Training memorises synthetic shapes; predictor contract; checkpoints; train_model controls."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from mnc_core import Instance, MNCConfig, Predictor, TrainProgress, load_checkpoint, save_checkpoint, train_model

from test_mnc_helpers import CIRCLE_ID, SQUARE_ID, ShapesDataset, mask_ap50, small_config

torch.set_num_threads(2)

H, W = 128, 160


def _config(**kw) -> MNCConfig:
    return small_config(optimizer="adamw", min_size=H, max_size=W, **kw)


@pytest.fixture(scope="module")
def trained():
    ds = ShapesDataset(3, size=(H, W))
    cfg = _config()
    progress: list[TrainProgress] = []
    t0 = time.perf_counter()
    model, summary = train_model(ds, cfg, iterations=200, lr=1e-3, seed=0, backbone_weights="none",
                                 on_progress=progress.append)
    return {"ds": ds, "cfg": cfg, "model": model, "summary": summary, "progress": progress,
            "seconds": time.perf_counter() - t0}


def test_cascade_memorises_synthetic_shapes(trained):
    ds, cfg, model = trained["ds"], trained["cfg"], trained["model"]
    assert not model.training
    s = trained["summary"]
    assert s["iterations"] == 200 and s["stopped_early"] is False
    first, last = trained["progress"][0].losses["total"], s["final_losses"]["total"]
    assert last < 0.5 * first
    pred = Predictor(model, cfg, ds.categories, "cpu")
    ap50 = mask_ap50(ds, [pred(x.image) for x in ds.samples])
    assert ap50 >= 0.9, f"mask AP50 {ap50:.3f} after {trained['seconds']:.0f} s"


def test_progress_reports(trained):
    p = trained["progress"]
    assert [x.iteration for x in p] == list(range(1, 201))
    assert all(x.iterations == 200 for x in p)
    assert all(b.seconds >= a.seconds for a, b in zip(p, p[1:]))
    assert {"total", "mask", "cls", "seg_cls", "bbox", "rpn_cls", "rpn_box", "mask_s45"} <= set(p[-1].losses)
    assert all(np.isfinite(v) for v in p[-1].losses.values())


def test_predictor_output_contract(trained):
    ds, cfg, model = trained["ds"], trained["cfg"], trained["model"]
    pred = Predictor(model, cfg, ds.categories, "cpu")
    img = ds[0].image
    # a differently sized image (resized internally, mapped back to the original size)
    big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)[:, :300]
    for im in (img, big):
        out = pred(im, score_threshold=0.0)
        assert out and all(isinstance(i, Instance) for i in out)
        scores = [i.score for i in out]
        assert scores == sorted(scores, reverse=True)
        for i in out:
            assert i.mask.dtype == np.bool_ and i.mask.shape == im.shape[:2]
            assert i.category_id in (CIRCLE_ID, SQUARE_ID)
            x1, y1, x2, y2 = i.box
            assert 0 <= x1 <= x2 <= im.shape[1] and 0 <= y1 <= y2 <= im.shape[0]
            assert 0.0 <= i.score <= 1.0
    # the threshold filters
    hi = pred(img, score_threshold=0.5)
    assert all(i.score > 0.5 for i in hi) and len(hi) <= len(pred(img, score_threshold=0.0))
    # detected circles really are circles: the top instance's mask overlaps a GT mask of its class
    top = hi[0]
    s = ds[0]
    ious = [(top.mask & m).sum() / (top.mask | m).sum() for m, c in zip(s.masks, s.category_ids) if c == top.category_id]
    assert max(ious) > 0.5
    assert [len(r) for r in pred.predict_batch([img, big], 0.5)] == [len(hi), len(pred(big, 0.5))]
    gray = pred(img.mean(axis=2).astype(np.uint8), 0.5)  # (H, W) grayscale is accepted
    assert all(i.mask.shape == img.shape[:2] for i in gray)
    with pytest.raises(ValueError):
        pred(img.astype(np.float32))


def test_checkpoint_round_trip(trained, tmp_path):
    ds, cfg, model = trained["ds"], trained["cfg"], trained["model"]
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, model, cfg, ds.categories, extra={"iterations": 200, "note": "t", "arr": np.float32(1.5)})
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # atomic write leaves no temp file
    raw = torch.load(path, weights_only=True)  # plain types + tensors only
    assert raw["categories"] == [[CIRCLE_ID, "circle"], [SQUARE_ID, "square"]]
    assert raw["config"] == cfg.to_dict()
    m2, cfg2, cats2, extra = load_checkpoint(path)
    assert cfg2 == cfg and cats2 == ds.categories and extra == {"iterations": 200, "note": "t", "arr": 1.5}
    a = Predictor(model, cfg, ds.categories, "cpu")(ds[1].image, 0.0)
    b = Predictor.from_checkpoint(path, device="cpu")(ds[1].image, 0.0)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.category_id == y.category_id and x.score == pytest.approx(y.score, abs=1e-5)
        assert np.array_equal(x.mask, y.mask)
    # overwrite in place works and stays atomic
    save_checkpoint(path, model, cfg, ds.categories)
    assert sorted(os.listdir(path.parent)) == ["model.pt"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"a": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.pt"):
        load_checkpoint(other)


def test_checkpoint_rejects_non_plain_extra(trained, tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.pt", trained["model"], trained["cfg"], trained["ds"].categories,
                        extra={"obj": object()})
    assert not list(tmp_path.iterdir())


def test_should_stop_init_checkpoint_and_determinism(trained, tmp_path):
    ds, cfg = trained["ds"], trained["cfg"]
    calls = []
    model, s = train_model(ds, cfg, iterations=50, backbone_weights="none", lr=1e-3,
                           should_stop=lambda: len(calls) >= 3, on_progress=calls.append)
    assert s["stopped_early"] is True and s["iterations"] == 3
    m1, _ = train_model(ds, cfg, iterations=2, backbone_weights="none", lr=1e-3, seed=5)
    m2, _ = train_model(ds, cfg, iterations=2, backbone_weights="none", lr=1e-3, seed=5)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    path = tmp_path / "init.pt"
    save_checkpoint(path, trained["model"], cfg, ds.categories)
    m3, s3 = train_model(ds, cfg, iterations=1, init_checkpoint=str(path), lr=1e-5)
    assert s3["iterations"] == 1
    w0 = trained["model"].classify_head.cls_score.weight
    assert torch.allclose(m3.classify_head.cls_score.weight, w0, atol=1e-3)  # started from the checkpoint
    other = ShapesDataset(1, size=(H, W))
    other.categories = [(1, "a"), (2, "b")]
    with pytest.raises(ValueError, match="categories"):
        train_model(other, cfg, iterations=1, init_checkpoint=str(path))


def test_unknown_category_id_is_a_clear_error():
    ds = ShapesDataset(1, size=(H, W))
    ds.samples[0].category_ids[0] = 99
    with pytest.raises(ValueError, match="99"):
        train_model(ds, _config(), iterations=1, backbone_weights="none")
