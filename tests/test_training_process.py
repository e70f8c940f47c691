"""Training in its own process: progress in the database, cancel, and a killed process."""

from __future__ import annotations

import os
import signal
import time

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
