"""train / predict / evaluate / models through the command line, on a database made from synthetic COCO."""

from __future__ import annotations

import json
import os

import pytest

from db import registry
from db.engine import DB_URL_VARIABLE, open_database
from db.models import RunStatus
from db.errors import WorkbenchError
from services.presets import TrainingSpec
from test_coco_import_export import run_cli


def open_db(data_dir):
    """The database the commands of this test use (WORKBENCH_DB_URL on PostgreSQL, else data_dir's SQLite file)."""
    return open_database(data_dir, os.environ.get(DB_URL_VARIABLE))


@pytest.fixture
def trained(tmp_path, synthetic_coco, db_backend, database_url, monkeypatch):
    """A data folder with the synthetic data and a 2-iteration model, made through the command line, on this
    test's backend (PostgreSQL: every command gets its URL through WORKBENCH_DB_URL, --db's default)."""
    data_dir = tmp_path / "data"
    if db_backend == "postgresql":
        monkeypatch.setenv(DB_URL_VARIABLE, database_url)
    else:
        monkeypatch.delenv(DB_URL_VARIABLE, raising=False)  # the default: the SQLite file in the data folder
    images = synthetic_coco.parent / "images"
    assert run_cli("import-coco", synthetic_coco, "--images", images, "--data-dir", data_dir, cwd=tmp_path).returncode == 0
    result = run_cli("train", "--iterations", "2", "--image-size", "64", "--backbone-weights", "none",
                     "--device", "cpu", "--data-dir", data_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model version 1" in result.stdout
    return data_dir, synthetic_coco


def test_train_records_a_run_and_an_active_version(trained):
    data_dir, _ = trained
    db = open_db(data_dir)
    version = registry.active_version(db)
    assert version is not None and version.id == 1
    assert registry.checkpoint_path(db, version).is_file()
    run = registry.get_run(db, version.training_run_id)
    assert run.status == RunStatus.succeeded and run.iteration == 2 and run.history[-1][0] == 2
    assert version.config["min_size"] == 64
    db.close()


@pytest.mark.backends("sqlite")  # PostgreSQL: the train, cancel and heads-retraining (models, predict) tests
def test_predict_writes_coco_results_with_file_names(trained, tmp_path):
    data_dir, coco_file = trained
    images = sorted((coco_file.parent / "images").glob("*.jpg"))
    out = tmp_path / "results.json"
    result = run_cli("predict", *images, "--out", out, "--score-threshold", "0", "--data-dir", data_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert isinstance(results, list)
    names = {p.name for p in images}
    for r in results:
        assert r["file_name"] in names
        assert r["category_id"] in (3, 7, 12)
        assert set(r["segmentation"]) == {"size", "counts"} and isinstance(r["segmentation"]["counts"], str)
        assert len(r["bbox"]) == 4 and 0 <= r["score"] <= 1


@pytest.mark.backends("sqlite")  # PostgreSQL: the train, cancel and heads-retraining (models, predict) tests
def test_evaluate_writes_the_metrics(trained, tmp_path):
    data_dir, coco_file = trained
    out = tmp_path / "metrics.json"
    result = run_cli("evaluate", "--annotations", coco_file, "--images", coco_file.parent / "images", "--out", out,
                     "--data-dir", data_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    for iou_type in ("segm", "bbox"):
        assert {"AP", "AP50", "AP70", "AP75"} <= set(metrics[iou_type])
        assert all(-1 <= metrics[iou_type][k] <= 1 for k in ("AP", "AP50", "AP70", "AP75"))
    assert "segm" in result.stdout and "AP70" in result.stdout


@pytest.mark.backends("sqlite")  # PostgreSQL: the train, cancel and heads-retraining (models, predict) tests
def test_models_lists_and_activates(trained, tmp_path):
    data_dir, _ = trained
    listed = run_cli("models", "--data-dir", data_dir, cwd=tmp_path)
    assert listed.returncode == 0 and "* v1" in listed.stdout
    missing = run_cli("models", "--activate", "9", "--data-dir", data_dir, cwd=tmp_path)
    assert missing.returncode == 2 and "no model version 9" in missing.stderr


def test_predict_without_a_model_says_what_to_do(tmp_path, synthetic_coco):
    result = run_cli("predict", synthetic_coco.parent / "images" / "img_0.jpg", "--out", tmp_path / "r.json",
                     "--data-dir", tmp_path / "empty", cwd=tmp_path)
    assert result.returncode == 2 and "launch.py train" in result.stderr


def test_train_without_annotations_says_what_to_do(tmp_path):
    result = run_cli("train", "--iterations", "1", "--backbone-weights", "none", "--data-dir", tmp_path / "empty",
                     cwd=tmp_path)
    assert result.returncode == 2 and "import-coco" in result.stderr


def test_cancelled_run_leaves_the_active_model_unchanged(trained, monkeypatch):
    from services import training

    data_dir, _ = trained
    db = open_db(data_dir)
    real_start = registry.start_run

    def start_and_cancel(*args, **kwargs):
        run_id = real_start(*args, **kwargs)
        registry.request_cancel(db, run_id)  # as another client (the UI) would
        return run_id

    monkeypatch.setattr(training.registry, "start_run", start_and_cancel)
    monkeypatch.setattr(training, "PROGRESS_EVERY", 1)
    result = training.train_from_database(db, TrainingSpec(iterations=50, image_size=64, backbone_weights="none",
                                                             device="cpu"))
    assert result.version_id is None and result.iterations < 50
    assert registry.active_version(db).id == 1
    assert registry.get_run(db, result.run_id).status == RunStatus.cancelled
    db.close()


def test_heads_retraining_starts_from_the_active_model_and_can_be_rolled_back(trained, tmp_path):
    from conftest import make_synthetic_coco

    data_dir, _ = trained
    val = make_synthetic_coco(tmp_path / "val", n_images=2, seed=5)
    assert run_cli("import-coco", val, "--images", val.parent / "images", "--split", "val",
                   "--data-dir", data_dir, cwd=tmp_path).returncode == 0
    result = run_cli("train", "--mode", "heads", "--iterations", "2", "--image-size", "64", "--backbone-weights",
                     "none", "--device", "cpu", "--data-dir", data_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model version 2" in result.stdout and "on 2 reviewed val images: mask AP" in result.stdout
    db = open_db(data_dir)
    v2 = registry.active_version(db)
    m = v2.metrics
    assert v2.id == 2 and m["mode"] == "heads" and m["mask_head"] == "transfer"
    assert m["started_from"].startswith("active model (3 classes kept, 0 new)")
    assert m["set_A"] == [3, 7] and m["set_B"] == [12]  # class 12 only ever has boxes
    assert m["val_images"] == 2 and {"mask_AP", "mask_AP_A", "box_AP", "train_loss"} <= set(m)
    assert registry.get_run(db, v2.training_run_id).mode == "heads"
    db.close()
    listed = run_cli("models", "--data-dir", data_dir, cwd=tmp_path)
    assert "* v2" in listed.stdout and "heads" in listed.stdout
    # roll back to version 1: predictions come from its checkpoint again
    assert run_cli("models", "--activate", "1", "--data-dir", data_dir, cwd=tmp_path).returncode == 0
    db = open_db(data_dir)
    assert registry.active_version(db).id == 1
    db.close()
    image = sorted((val.parent / "images").glob("*.jpg"))[0]
    out = tmp_path / "v1.json"
    assert run_cli("predict", image, "--out", out, "--data-dir", data_dir, cwd=tmp_path).returncode == 0
    # starting explicitly from a model of another architecture is refused with a way out
    refused = run_cli("train", "--mode", "heads", "--mask-head", "none", "--init", "active", "--iterations", "1",
                      "--image-size", "64", "--device", "cpu", "--data-dir", data_dir, cwd=tmp_path)
    assert refused.returncode == 2 and "--init backbone" in refused.stderr


@pytest.mark.backends("sqlite")
def test_a_mode_without_iterations_or_size_runs_its_preset(tmp_path, synthetic_coco, monkeypatch):
    """`launch.py train --mode heads` without --iterations / --image-size and the UI's Train button run the same
    preset: its iterations (for the device found), image size and configuration, recorded in the version."""
    from db.coco_import import import_coco
    from services import presets, training

    tiny = presets.Preset(iterations=3, gpu_iterations=7, image_size=64,
                          config=(("num_stages", 3), ("roi_batch_size", 8), ("test_score", "cls"),
                                  ("inference_stages", 5)),
                          freeze_body=True, cache_frozen_features=True, description="tiny")
    monkeypatch.setitem(presets.PRESETS, "heads", tiny)
    db = open_database(tmp_path / "data")
    import_coco(db, synthetic_coco, synthetic_coco.parent / "images")
    result = training.train_from_database(db, TrainingSpec(mode="heads", backbone_weights="none", device="cpu",
                                                             init="backbone"))
    version = registry.active_version(db)
    assert result.iterations == 3 and registry.get_run(db, result.run_id).iterations == 3
    config = version.config
    assert (config["min_size"], config["num_stages"], config["roi_batch_size"]) == (64, 3, 8)
    assert config["test_score"] == "cls" and config["inference_stages"] == 5
    # heads: the whole MobileNetV2 body frozen and cached (the pyramid's: features 0-17, up to stride 32)
    assert config["backbone_frozen_blocks"] == 18 and config["feature_pyramid"] is True
    assert version.name.endswith("3 it @ 64px")
    # the UI's start: the training process gets the run's id, and reads the typed spec stored with the run
    # (no iterations / image size: the preset decides)
    commands = []

    class FakeProcess:
        pid = os.getpid()

        def __init__(self, command, **kwargs):
            commands.append(command)

        def wait(self):  # what the server's reaper thread calls
            return 0

    monkeypatch.setattr(training.subprocess, "Popen", FakeProcess)
    spec = TrainingSpec(mode="heads", device="cpu", low_priority=True)
    run_id = training.start_training(db, spec)
    assert commands[0][-4:] == ["--run-id", str(run_id), "--data-dir", str(db.data_dir)]
    assert training.queued_spec(db, run_id) == spec
    assert registry.get_run(db, run_id).iterations == 3  # the preset's, for the progress bar
    registry.finish_run(db, run_id, RunStatus.cancelled)  # one run at a time
    sized = TrainingSpec(mode="heads", device="cpu", iterations=50, image_size=96)
    other = training.start_training(db, sized)
    assert training.queued_spec(db, other) == sized and registry.get_run(db, other).iterations == 50
    db.close()


def test_training_choices_are_listed_once_and_checked():
    """The CLI's choices come from services.presets (the UI's too); a spec refuses what is not a choice, and
    survives the trip through the database (a queued run's params) unchanged."""
    from launch import build_parser
    from partial_sup.maskx import METHODS
    from services import presets

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    choices = {action.dest: tuple(action.choices) for action in train._actions if action.choices}  # noqa: SLF001
    assert choices == {"mode": presets.MODES, "mask_head": presets.MASK_HEADS, "init": presets.INITS,
                       "backbone": presets.BACKBONES}
    assert set(presets.MASK_HEADS) == set(METHODS) | {"none"}
    spec = TrainingSpec(mode="full", iterations=7, mask_head="agnostic", batch_size=2, low_priority=True)
    assert TrainingSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for bad, message in ((dict(mode="fast"), "mode must be one of heads, full"),
                         (dict(mask_head="x"), "mask head must be one of"), (dict(init="x"), "init must be one of"),
                         (dict(iterations=0), "iterations"), (dict(image_size=16), "32 pixels"),
                         (dict(batch_size=0), "batch size")):
        with pytest.raises(WorkbenchError, match=message):
            TrainingSpec(**bad)
    with pytest.raises(WorkbenchError, match="unknown training settings lr_decay"):
        TrainingSpec.from_dict({"lr_decay": 1})


def test_a_cancel_is_seen_within_a_second_and_shown_at_once(tmp_path, synthetic_coco, monkeypatch):
    """Issue 26, bug 6: Cancel showed nothing for 43 s (the training process looked for it only with its progress
    records, every PROGRESS_EVERY iterations). The page says "cancelling" at once, and the process looks for a
    cancel at least every CANCEL_POLL_S between its records."""
    from app.handlers import Handlers
    from db.coco_import import import_coco
    from services import training
    from services.workbench import Workbench

    db = open_database(tmp_path / "data")
    import_coco(db, synthetic_coco, synthetic_coco.parent / "images")
    queued = registry.create_run(db, mode="heads", iterations=5, params={})
    training.cancel_training(db, queued)
    shown = Handlers(Workbench(db, device="cpu")).run_outputs(queued).status
    assert "cancelling" in shown and "stops at its next step" in shown
    registry.finish_run(db, queued, registry.RunStatus.cancelled)
    monkeypatch.setattr(training, "PROGRESS_EVERY", 10**6)  # no progress record before the end
    monkeypatch.setattr(training, "CANCEL_POLL_S", 0.0)
    polls = []  # someone pressed Cancel: the next look finds it
    monkeypatch.setattr(registry, "cancel_is_requested", lambda db_, run_id: polls.append(run_id) or True)
    result = training.train_from_database(db, TrainingSpec(iterations=200, image_size=64, backbone_weights="none",
                                                             device="cpu"))
    assert result.stopped_early and result.iterations <= 2 and polls == [result.run_id] * len(polls) != []
    assert registry.get_run(db, result.run_id).status == registry.RunStatus.cancelled
