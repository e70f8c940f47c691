"""Training in its own process: progress in the database, cancel, and a killed process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from db import registry
from db.coco_import import import_coco
from services.presets import TrainingSpec
from services.training import cancel_training, run_state, start_training

TINY = dict(image_size=64, backbone_weights="none", device="cpu", low_priority=True)


@pytest.fixture
def db_with_data(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    return database


def wait_until(predicate, seconds: float = 300, every: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


@pytest.mark.backends("sqlite")  # on PostgreSQL the test below runs a training process to its end
def test_background_run_trains_and_activates_a_version(db_with_data):
    db = db_with_data
    run_id = start_training(db, TrainingSpec(iterations=12, **TINY))
    state = wait_until(lambda: (s := run_state(db, run_id)).finished and s)
    assert state.status == "succeeded", state.message
    assert state.iteration == 12 and [h[0] for h in state.history] == [10, 12]
    assert registry.active_version(db).id == state.version_id is not None


@pytest.mark.backends("sqlite")  # the cancel flag is one column, as in record_progress
def test_cancel_stops_the_run_and_keeps_the_active_model(db_with_data):
    db = db_with_data
    run_id = start_training(db, TrainingSpec(iterations=100_000, **TINY))
    running = wait_until(lambda: (s := run_state(db, run_id)).iteration >= 10 and s)
    assert running.status == "running" and len(running.history[-1]) == 3  # [iteration, loss, seconds]
    assert running.eta_seconds is not None and running.eta_seconds > 0  # progress shows the time left
    # the process yields the CPU to the server: it runs only when the CPU is otherwise idle
    assert os.sched_getscheduler(registry.get_run(db, run_id).pid) == os.SCHED_IDLE
    cancel_training(db, run_id)
    state = wait_until(lambda: (s := run_state(db, run_id)).finished and s, seconds=120)
    assert state.status == "cancelled" and state.version_id is None
    assert 10 <= state.iteration < 100_000
    assert registry.active_version(db) is None


def test_killed_process_leaves_a_consistent_database(db_with_data):
    """(On both backends: the training process gets the database's URL, runs one training to its
    end and is killed in a second one.)"""
    db = db_with_data
    first = start_training(db, TrainingSpec(iterations=2, **TINY))
    done = wait_until(lambda: (s := run_state(db, first)).finished and s)
    assert done.status == "succeeded"
    run_id = start_training(db, TrainingSpec(iterations=100_000, **TINY))
    wait_until(lambda: run_state(db, run_id).iteration >= 10)
    pid = registry.get_run(db, run_id).pid
    argv = open(f"/proc/{pid}/cmdline", "rb").read()
    assert b"--db" not in argv and db.url.encode() not in argv  # `ps` would show its password to everyone
    os.kill(pid, signal.SIGKILL)
    state = wait_until(lambda: (s := run_state(db, run_id)).finished and s, seconds=60)
    assert state.status == "failed" and "ended unexpectedly" in state.message
    assert db.integrity_ok()
    active = registry.active_version(db)
    assert active.id == done.version_id and registry.checkpoint_path(db, active).is_file()
    from partial_sup.maskx import predictor_from_file

    assert predictor_from_file(registry.checkpoint_path(db, active), device="cpu").categories  # still loads


# ---- issue 23, finding 6: labelling during a run; one run at a time; a starting run is alive ----------------
def test_a_run_trains_on_the_classes_and_labels_it_started_with(db_with_data):
    """Adding a class and labelling it during a retrain made the run fail ("category id 13 is not in
    dataset.categories"): the dataset is a snapshot of the classes and annotations at its start, also in the
    DataLoader's worker processes (which get it pickled)."""
    import pickle

    import numpy as np

    from db.annotations import InstanceData, get_annotations, save_annotations
    from db.categories import add_category
    from mnc_core import MNCConfig
    from mnc_core.training_data import prepare_sample
    from services.dataset import DatabaseDataset

    db = db_with_data
    dataset = DatabaseDataset(db, "train")
    started = ([c for c, _ in dataset.categories], list(dataset.image_ids))
    # meanwhile people label: a new class on an image of the run, an old instance given it, one more instance
    kite = add_category(db, "kite")
    image_id = dataset.image_ids[0]
    revision, rows = get_annotations(db, image_id, decode_masks=False)
    first_object = next(r for r in rows if not r["iscrowd"])
    mask = np.zeros((48, 64), bool)
    mask[4:20, 4:30] = True
    save_annotations(db, image_id, [InstanceData.from_row(r, category_id=kite) if r["id"] == first_object["id"]
                                    else InstanceData.from_row(r) for r in rows]
                     + [InstanceData(category_id=kite, mask=mask), InstanceData(category_id=3, mask=mask)],
                     seen_revision=revision)
    assert kite not in dict(dataset.categories)
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(dataset.categories)}
    config = MNCConfig().replace(min_size=64, max_size=96)
    for copy in (dataset, pickle.loads(pickle.dumps(dataset))):  # this process, and a worker's copy
        assert ([c for c, _ in copy.categories], list(copy.image_ids)) == started
        for index in range(len(copy)):
            sample = copy[index]
            assert set(int(c) for c, crowd in zip(sample.category_ids, sample.crowd_flags()) if not crowd) \
                <= set(cat_to_label)
            prepare_sample(sample, cat_to_label, config, flip=False)  # raised "category id ... is not in ..."
        first = copy[0]
        assert len(first.category_ids) == len([r for r in rows if r["id"] != first_object["id"]])  # none added
    assert DatabaseDataset(db, "train").snapshot.sets[kite] == "A"  # the next run trains the new class


def test_a_starting_run_counts_as_alive_until_its_pid_is_known(db_with_data, monkeypatch):
    """A run is recorded before its process starts; a client polling it in that moment (no pid yet) marked it
    "ended unexpectedly" though it was starting. Its process is being started by one thread while another
    polls: the run is queued, not failed. One whose pid never comes is failed after the grace time."""
    import threading
    from datetime import datetime, timedelta, timezone

    from db.models import TrainingRun
    from services import training

    db = db_with_data
    barrier = threading.Barrier(2, timeout=60)
    polled = threading.Event()
    seen = []

    class Process:  # the training process as it starts: slow enough for a poll to come first
        def __init__(self, command, **kwargs):
            barrier.wait()
            assert polled.wait(60)
            self.pid = os.getpid()

        def wait(self):  # what the server's reaper thread calls
            return 0

    def poll():
        barrier.wait()
        try:
            seen.append(run_state(db, registry.active_run(db)))
        finally:
            polled.set()

    monkeypatch.setattr(training.subprocess, "Popen", Process)
    poller = threading.Thread(target=poll)
    poller.start()
    run_id = start_training(db, TrainingSpec(iterations=5, **TINY))
    poller.join(60)
    assert seen and seen[0].run_id == run_id and seen[0].status == "queued", seen
    assert run_state(db, run_id).status == "queued"  # its pid recorded now (this process: alive)
    # a run whose process never got going: no pid, recorded longer ago than the grace time
    registry.finish_run(db, run_id, registry.RunStatus.cancelled)
    stuck = registry.create_run(db, mode="heads", iterations=5, params={})
    assert run_state(db, stuck).status == "queued"
    with db.session() as session:
        session.get(TrainingRun, stuck).created_at = (datetime.now(timezone.utc)
                                                      - timedelta(seconds=training.STARTING_GRACE_S + 1))
    state = run_state(db, stuck)
    assert state.status == "failed" and "did not start" in state.message


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_a_finished_training_process_is_reaped(db_with_data, monkeypatch, tmp_path):
    """Issue 26, bug 6: finished training processes stayed zombies of the server (never waited for). Here the
    process is a stand-in script that exits at once: it must leave the process table, not stay a zombie."""
    from services import training

    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(0)\n")
    monkeypatch.setattr(training, "LAUNCH", script)
    run_id = start_training(db_with_data, TrainingSpec(iterations=5, **TINY))
    pid = registry.get_run(db_with_data, run_id).pid
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] if Path(f"/proc/{pid}").exists() else None
    assert state is None, f"the training process {pid} is still in the process table (state {state})"
