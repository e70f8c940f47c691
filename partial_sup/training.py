"""Training from the database: a recorded training run, a checkpoint and a new active model version."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from db import registry
from db.engine import Database
from db.errors import WorkbenchError
from db.models import RunStatus
from mnc_core import BackboneWeightsError, MNCConfig, TrainProgress, default_lr, save_checkpoint, train_model
from partial_sup.data import DatabaseDataset

PROGRESS_EVERY = 10  # iterations between progress records in the database (and cancel checks)


@dataclass
class TrainResult:
    run_id: int
    version_id: int | None
    checkpoint: str | None
    iterations: int
    stopped_early: bool
    final_loss: float | None
    seconds: float

    def summary(self) -> str:
        if self.version_id is None:
            return f"training run {self.run_id} was cancelled after {self.iterations} iterations; the active model is unchanged"
        loss = f", final loss {self.final_loss:.3f}" if self.final_loss is not None else ""
        return (f"training run {self.run_id}: {self.iterations} iterations in {self.seconds:.0f} s{loss}; "
                f"model version {self.version_id} ({self.checkpoint}) is now active")


def train_from_database(db: Database, *, iterations: int, image_size: int = 600, backbone: str = "mobilenet_v2",
                        backbone_weights: str | None = None, device: str | None = None, seed: int = 0,
                        lr: float | None = None, config: MNCConfig | None = None,
                        show_progress: bool = False, run_id: int | None = None) -> TrainResult:
    """Train on the accepted annotations of the train split; on success the new model version is active.

    ``run_id``: a queued run (made by :func:`partial_sup.service.start_training`) that this process
    takes over; otherwise a new run is recorded. Progress and the final state are stored in it."""
    if iterations < 1:
        raise WorkbenchError("--iterations must be at least 1")
    config = (config or MNCConfig()).replace(backbone=backbone, min_size=image_size,
                                             max_size=max(image_size, int(image_size * 5 / 3)))
    lr = default_lr(config) if lr is None else lr
    try:
        dataset = DatabaseDataset(db, "train")
    except WorkbenchError as exc:
        if run_id is not None:
            registry.claim_run(db, run_id, {})
            registry.finish_run(db, run_id, RunStatus.failed, str(exc))
        raise
    params = {"iterations": iterations, "image_size": image_size, "backbone": backbone, "seed": seed, "lr": lr,
              "backbone_weights": backbone_weights, "images": len(dataset), "categories": len(dataset.categories)}
    if run_id is None:
        run_id = registry.start_run(db, mode="full", iterations=iterations, params=params)
    else:
        registry.claim_run(db, run_id, params)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=iterations, desc=f"training run {run_id}", unit="it", file=sys.stderr, dynamic_ncols=True)
    cancel = {"requested": False}

    def on_progress(progress: TrainProgress) -> None:
        loss = progress.losses.get("total", float("nan"))
        if bar is not None:
            bar.update(progress.iteration - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")
        if progress.iteration % PROGRESS_EVERY == 0 or progress.iteration == progress.iterations:
            cancel["requested"] = registry.record_progress(db, run_id, iteration=progress.iteration, loss=loss)

    start = time.perf_counter()
    try:
        model, summary = train_model(dataset, config, iterations=iterations, device=device, seed=seed, lr=lr,
                                     backbone_weights=backbone_weights, on_progress=on_progress,
                                     should_stop=lambda: cancel["requested"])
        if summary["stopped_early"]:
            registry.finish_run(db, run_id, RunStatus.cancelled, "cancelled")
            return TrainResult(run_id, None, None, summary["iterations"], True, None, time.perf_counter() - start)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        checkpoint = registry.models_dir(db) / f"run{run_id:04d}-{stamp}.pt"
        final_loss = summary["final_losses"].get("total")
        save_checkpoint(checkpoint, model, config, dataset.categories,
                        extra={"run_id": run_id, "iterations": summary["iterations"], "seed": seed, "lr": lr,
                               "final_loss": final_loss})
        version_id = registry.register_version(
            db, checkpoint, name=f"{backbone} {iterations} it @ {image_size}px", config=config.to_dict(),
            metrics={"final_loss": final_loss, "train_images": len(dataset)}, run_id=run_id, activate=True)
        registry.finish_run(db, run_id, RunStatus.succeeded, f"model version {version_id}")
    except BackboneWeightsError as exc:
        registry.finish_run(db, run_id, RunStatus.failed, str(exc))
        raise WorkbenchError(str(exc)) from None
    except KeyboardInterrupt:
        registry.finish_run(db, run_id, RunStatus.cancelled, "interrupted")
        raise
    except BaseException as exc:
        registry.finish_run(db, run_id, RunStatus.failed, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(run_id, version_id, str(checkpoint), summary["iterations"], False, final_loss,
                       time.perf_counter() - start)
