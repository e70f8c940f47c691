"""Faults: kill -9 of the server in the middle of saves and of a training run while it writes its
checkpoint; a full disk during an export and a checkpoint. Real processes, real signals, a real
small filesystem (tmpfs, when this user may mount one) or a real file-size limit (RLIMIT_FSIZE)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_app_helpers import register_tiny_model, tiny_checkpoint
from test_serve import ROOT, start_server
from test_training_process import TINY, wait_until

ENV = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT))


def launch(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def box_of(image_id: int, k: int) -> list[float]:
    """The k-th save's box on an image: different for every save (64 x 48 images at least)."""
    x, y = 1 + k % 40, 1 + (k // 40) % 30
    return [float(x), float(y), float(x + 10), float(y + 10)]


def test_kill_9_of_the_server_during_saves_loses_no_acknowledged_save(tmp_path, synthetic_coco, database_url):
    from gradio_client import Client

    from db.engine import open_database
    from db.models import Annotation, Image, JournalEntry

    data_dir = tmp_path / "wb"
    assert launch("import-coco", synthetic_coco, "--images", synthetic_coco.parent / "images", "--data-dir",
                  data_dir, "--db", database_url).returncode == 0
    process, url = start_server(data_dir, db_url=database_url)
    acknowledged: list[tuple[int, int, list[float]]] = []  # (image, revision the save made, its box)
    failures: list[Exception] = []

    def save_forever():
        client = Client(url, verbose=False)
        revisions = {i: client.predict(i, api_name="/instances")["revision"] for i in range(1, 5)}
        k = 0
        while True:
            image_id = 1 + k % 4
            box = box_of(image_id, k)
            try:
                out = client.predict(image_id, [{"category": "car", "box": box}], revisions[image_id],
                                     api_name="/save_annotations")
                revisions[image_id] = out["saved_revision"]  # this client alone saves these images
            except Exception as exc:  # noqa: BLE001 (the server is gone: the end of this test's client)
                failures.append(exc)
                return
            acknowledged.append((image_id, out["saved_revision"], box))
            k += 1

    saver = threading.Thread(target=save_forever, daemon=True)
    try:
        saver.start()
        wait_until(lambda: len(acknowledged) >= 24 or not saver.is_alive(), seconds=300, every=0.05)
        assert saver.is_alive(), failures
        os.kill(process.pid, signal.SIGKILL)  # the client is saving all the time: one save is in flight
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    saver.join(timeout=120)
    assert not saver.is_alive() and failures  # the client saw the server go
    assert process.returncode == -signal.SIGKILL
    db = open_database(data_dir, database_url)
    try:
        assert db.integrity_ok()
        with db.session() as session:
            revisions = {i.id: i.revision for i in session.query(Image)}
            current = {}
            for ann in session.query(Annotation).filter(Annotation.image_id.in_([1, 2, 3, 4])):
                current.setdefault(ann.image_id, []).append(ann.bbox)
            journal = {(e.image_id, e.revision): e.snapshot for e in session.query(JournalEntry)
                       if e.action == "save"}
        for image_id, revision, box in acknowledged:
            x1, y1, x2, y2 = box
            expected = [[x1, y1, x2 - x1, y2 - y1]]
            if revisions[image_id] == revision:  # the newest save of the image: its annotations now
                assert current[image_id] == expected, (image_id, revision)
            else:  # an older one: what the next save found and journalled (undo brings it back)
                assert revision < revisions[image_id]
                snapshot = journal[(image_id, revision)]
                assert [[r["bbox_x"], r["bbox_y"], r["bbox_w"], r["bbox_h"]] for r in snapshot] == expected
        last = max(acknowledged, key=lambda a: a[1])
        assert revisions[last[0]] >= last[1]
        newest = sum(revisions[i] == r for i, r, _ in acknowledged)
        print(f"kill -9 during saves: {len(acknowledged)} acknowledged saves, all found ({newest} as the images' "
              f"annotations, {len(acknowledged) - newest} in the journal); integrity check passed")
    finally:
        db.close()


@pytest.fixture
def trained(database, synthetic_coco, tmp_path_factory):
    """The synthetic data and an active tiny model version."""
    from db.coco_import import import_coco

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    version = register_tiny_model(database, tmp_path_factory.getbasetemp())
    return database, version


def assert_active_model_unchanged(db, version_id: int) -> None:
    from db import registry
    from partial_sup.maskx import predictor_from_file

    assert db.integrity_ok()
    active = registry.active_version(db)
    assert active.id == version_id
    assert predictor_from_file(registry.checkpoint_path(db, active), device="cpu").categories  # loads


def test_kill_9_of_training_while_it_writes_its_checkpoint(trained):
    from db import registry
    from services.presets import TrainingSpec
    from services.training import run_state, start_training

    db, version = trained
    models = registry.models_dir(db)
    for attempt in range(4):  # the checkpoint is written in well under a second: watch for its temp file
        run_id = start_training(db, TrainingSpec(iterations=2, **TINY))
        pid = wait_until(lambda: registry.get_run(db, run_id).pid, seconds=60, every=0.01)
        partial, prefix, next_check = None, f".tmp-run{run_id:04d}-", 0.0
        while partial is None:
            with os.scandir(models) as entries:
                partial = next((Path(e.path) for e in entries if e.name.startswith(prefix)), None)
            if partial is None and time.monotonic() > next_check:  # the database only now and then
                if run_state(db, run_id).finished:
                    break
                next_check = time.monotonic() + 0.2
        if partial is None:  # missed the moment: the run finished; roll back to the tiny model, try again
            registry.activate_version(db, version)
            continue
        os.kill(pid, signal.SIGKILL)
        state = wait_until(lambda: (s := run_state(db, run_id)).finished and s, seconds=60)
        if list(models.glob(f"run{run_id:04d}-*")):  # the rename came first (a complete checkpoint): again
            registry.activate_version(db, version)
            continue
        assert state.status == "failed" and "ended unexpectedly" in state.message and state.version_id is None
        print(f"kill -9 of training: run {attempt + 1} was killed while its checkpoint's temp file existed")
        break  # killed while the checkpoint was half written
    else:
        pytest.fail("no kill came while the checkpoint's temp file was being written in 4 runs")
    assert not list(models.glob(f"run{run_id:04d}-*"))  # no checkpoint of the killed run under its final name
    assert not list(models.glob(".tmp-*"))  # the half-written file was removed when the run was found dead
    assert_active_model_unchanged(db, version)


# ---- a full disk -------------------------------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(mount: Path, size_kb: int):
    """A real filesystem of ``size_kb`` KB (tmpfs) mounted on ``mount`` for the block; skips the test where
    this user may not mount one (the file-size-limit variants still run there)."""
    mount.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the file-size-limit variant of this test still runs)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the file-size-limit variant still runs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    with small_filesystem(tmp_path / "small-disk", 2048) as mount:
        yield mount


def fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of ``folder`` until about ``leave`` bytes are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


def limited(command: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """Run ``command`` with files limited to ``max_bytes`` (RLIMIT_FSIZE: writes beyond fail with EFBIG)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error instead of the signal that ends the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=limit)


@pytest.fixture
def exportable(tmp_path):
    """A data folder with 40 images' annotations (an export of about 50 KB) and the export's size."""
    from conftest import make_synthetic_coco

    coco = make_synthetic_coco(tmp_path / "coco", n_images=40)
    data_dir = tmp_path / "wb"
    assert launch("import-coco", coco, "--images", coco.parent / "images", "--data-dir", data_dir).returncode == 0
    full = tmp_path / "full.json"
    assert launch("export-coco", "--data-dir", data_dir, "--out", full, "--mask-format", "rle").returncode == 0
    return data_dir, full.stat().st_size


def assert_nothing_written(folder: Path, keep=("filler",)) -> None:
    assert sorted(p.name for p in folder.iterdir() if p.name not in keep) == []


def test_disk_full_during_export_leaves_no_file(exportable, small_disk):
    data_dir, size = exportable
    assert size > 16_384
    fill(small_disk, leave=size // 2)
    out = small_disk / "coco.json"
    done = launch("export-coco", "--data-dir", data_dir, "--out", out, "--mask-format", "rle")
    assert done.returncode == 2, done.stderr
    assert "No space left on device" in done.stderr and "nothing was written" in done.stderr
    assert_nothing_written(small_disk)


def test_file_size_limit_during_export_leaves_no_file(exportable, tmp_path):
    data_dir, size = exportable
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = ("import sys, resource\n"
            "from db.engine import open_database\nfrom db.coco_export import export_coco\n"
            "db = open_database(sys.argv[1])\n"  # the database is opened before the limit applies
            "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]),) * 2)\n"
            "export_coco(db, sys.argv[2], mask_format='rle')\n")
    done = limited([sys.executable, "-c", code, str(data_dir), str(out_dir / "coco.json"),
                    str(size // 2)], max_bytes=2**40)
    assert done.returncode != 0
    assert "File too large" in done.stderr and "nothing was written" in done.stderr
    assert_nothing_written(out_dir)


def test_disk_full_during_a_training_checkpoint(trained, small_disk, tmp_path):
    """The models folder on a small filesystem: the run fails with the reason, no file is left, and the
    active model stays and loads."""
    import shutil

    from db import registry
    from services.presets import TrainingSpec
    from services.training import run_state, start_training

    db, version = trained
    models = registry.models_dir(db)
    moved = tmp_path / "models-before"
    shutil.move(models, moved)
    size_kb = sum(p.stat().st_size for p in moved.iterdir()) // 1024 + 512
    with small_filesystem(models, size_kb):  # the active model fits; a new checkpoint (as large) does not
        for path in moved.iterdir():
            shutil.copy2(path, models / path.name)
        assert_active_model_unchanged(db, version)
        run_id = start_training(db, TrainingSpec(iterations=2, **TINY))
        state = wait_until(lambda: (s := run_state(db, run_id)).finished and s, seconds=300)
        assert state.status == "failed" and "No space left on device" in state.message, state.message
        assert "could not write checkpoint" in state.message and state.version_id is None
        assert sorted(p.name for p in models.iterdir()) == sorted(p.name for p in moved.iterdir())
        assert_active_model_unchanged(db, version)


def test_file_size_limit_during_a_checkpoint_leaves_no_file(tmp_path_factory, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path_factory.getbasetemp())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = ("import sys\n"
            "from mnc_core.checkpoint import load_checkpoint, save_checkpoint\n"
            "model, config, categories, extra = load_checkpoint(sys.argv[1])\n"
            "save_checkpoint(sys.argv[2], model, config, categories, extra)\n")
    size = checkpoint.stat().st_size
    done = limited([sys.executable, "-c", code, str(checkpoint), str(out_dir / "model.pt")],
                   max_bytes=size // 2)
    assert done.returncode != 0
    assert "could not write checkpoint" in done.stderr and "File too large" in done.stderr
    assert_nothing_written(out_dir)
