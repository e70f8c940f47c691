"""Training from the database: a recorded training run, a checkpoint and a new active model version."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from db import queries, registry
from db.engine import Database
from db.errors import WorkbenchError
from db.models import RunStatus
from mnc_core import (BackboneWeightsError, MNCConfig, Predictor, TrainProgress, default_lr, distributed,
                      save_checkpoint, train_model, warm_start)
from mnc_core.backbone import body_blocks
from partial_sup.data import DatabaseDataset
from partial_sup.maskx import MASK_HEADS, MaskXConfig, build_maskx_model, load_model
from partial_sup.presets import PRESETS
from partial_sup.validation import evaluate_on_val

PROGRESS_EVERY = 10  # iterations between progress records in the database (and cancel checks)
INITS = ("auto", "active", "backbone")  # auto: the active model when it is compatible, else the backbone weights
MODES = tuple(PRESETS)


def training_config(mode: str, image_size: int, backbone: str = "mobilenet_v2", batch_size: int = 1,
                    base: MNCConfig | None = None) -> MNCConfig:
    """The model and training configuration of a mode's run at an image size (short side)."""
    preset = PRESETS[mode]
    config = (base or MNCConfig()).replace(backbone=backbone, min_size=image_size,
                                           max_size=max(image_size, int(image_size * 5 / 3)),
                                           images_per_batch=batch_size, **dict(preset.config))
    if preset.freeze_body:  # the 1x1 reduction, RPN and heads train
        config = config.replace(backbone_frozen_blocks=body_blocks(backbone, config.mobilenet_dilated,
                                                                   config.mobilenet_expansion))
    return config


@dataclass
class TrainResult:
    run_id: int
    version_id: int | None
    checkpoint: str | None
    iterations: int
    stopped_early: bool
    final_loss: float | None
    seconds: float
    metrics: dict | None = None

    def summary(self) -> str:
        if self.version_id is None:
            return f"training run {self.run_id} was cancelled after {self.iterations} iterations; the active model is unchanged"
        loss = f", final loss {self.final_loss:.3f}" if self.final_loss is not None else ""
        text = (f"training run {self.run_id}: {self.iterations} iterations in {self.seconds:.0f} s{loss}; "
                f"model version {self.version_id} ({self.checkpoint}) is now active")
        m = self.metrics or {}
        if m.get("val_images"):
            def fmt(key: str) -> str:
                return "-" if m.get(key) is None else f"{m[key]:.3f}"
            text += (f"\non {m['val_images']} reviewed val images: mask AP {fmt('mask_AP')} (set A {fmt('mask_AP_A')}, "
                     f"set B {fmt('mask_AP_B')}), box AP {fmt('box_AP')}")
        else:
            text += "\n(no reviewed val-split images: import or review some to get mask/box AP per version)"
        return text


def _initial_model(db: Database, config: MNCConfig, categories: list[tuple[int, str]], maskx: MaskXConfig | None,
                   backbone_weights: str | None, init: str):
    """A model for ``categories``: warm-started from the active version when ``init`` allows it and the
    active model has the same architecture; otherwise from ``backbone_weights``. -> (model, description)."""
    source = None
    if init in ("auto", "active"):
        active = registry.active_version(db)
        if active is not None:
            path = registry.checkpoint_path(db, active)
            try:
                source = load_model(path)
            except (OSError, ValueError) as exc:
                if init == "active":
                    raise WorkbenchError(f"the active model {path} cannot be loaded: {exc}") from None
            if source is not None:
                src_model, src_config, src_categories, src_extra = source
                same = (src_config.architecture() == config.architecture()
                        and src_extra.get("maskx") == (maskx.to_dict() if maskx else None))
                if not same:
                    if init == "active":
                        raise WorkbenchError("the active model has another architecture (backbone, sizes or mask "
                                             "head): train with --init backbone")
                    source = None
        elif init == "active":
            raise WorkbenchError("there is no active model to start from: train with --init backbone")
    if source is None:
        return build_maskx_model(config, len(categories), maskx, backbone_weights), "backbone weights"
    src_model, _, src_categories, _ = source
    model = build_maskx_model(config, len(categories), maskx, "none")
    report = warm_start(model, categories, src_model.state_dict(), src_categories)
    return model, f"active model ({report['classes_kept']} classes kept, {report['classes_new']} new)"


def train_from_database(db: Database, *, iterations: int | None = None, image_size: int | None = None,
                        backbone: str = "mobilenet_v2", backbone_weights: str | None = None, device: str | None = None,
                        seed: int = 0, lr: float | None = None, config: MNCConfig | None = None, mode: str = "heads",
                        mask_head: str = "transfer", init: str = "auto", batch_size: int = 1,
                        num_workers: int | None = None, feature_cache_mb: float | None = None,
                        show_progress: bool = False, run_id: int | None = None) -> TrainResult | None:
    """Train on the accepted annotations of the train split; on success the new model version is active.

    mode: a key of PRESETS, "heads" (frozen backbone body, cached features) or "full" (end-to-end);
    iterations and image_size default to the mode's preset (its iterations for the device found).
    batch_size: images per iteration and process (the lr scales with it, see mnc_core.train).
    num_workers: data-loading processes (None: one per spare core); feature_cache_mb: the frozen-feature
    cache's budget (None: mnc_core's default for the device). mask_head:
    "transfer" (Mask^X: box-only classes get masks through the weight transfer), "agnostic" (the
    class-agnostic baseline) or "none" (plain MNC). init: see INITS. The new version is evaluated
    on the reviewed val-split images (mask AP on set A and B, box AP) and those metrics are stored.

    ``run_id``: a queued run (made by :func:`partial_sup.service.start_training`) that this process
    takes over; otherwise a new run is recorded. Progress and the final state are stored in it.

    Under torchrun (several processes, GPUs or machines; see mnc_core/distributed.py) every process
    reads the train split and trains its share of each global batch; only rank 0 writes: the run,
    its progress, the checkpoint and the new version (it also evaluates), and it alone decides on a
    cancel request. The other processes return None once training is over."""
    if mode not in PRESETS:
        raise WorkbenchError(f"mode must be one of {', '.join(PRESETS)}, not {mode!r}")
    if mask_head not in MASK_HEADS:
        raise WorkbenchError(f"the mask head must be one of {', '.join(MASK_HEADS)}, not {mask_head!r}")
    if init not in INITS:
        raise WorkbenchError(f"init must be one of {', '.join(INITS)}, not {init!r}")
    preset = PRESETS[mode]
    job = distributed.from_env()
    if iterations is None:
        iterations = preset.iterations_on(distributed.resolve_device(device, job).type)
    image_size = preset.image_size if image_size is None else image_size
    if iterations < 1:
        raise WorkbenchError("--iterations must be at least 1")
    if image_size < 32:
        raise WorkbenchError("--image-size must be at least 32 pixels")
    if batch_size < 1:
        raise WorkbenchError("--batch-size must be at least 1")
    config = training_config(mode, image_size, backbone, batch_size, config)
    maskx = None if mask_head == "none" else MaskXConfig(method=mask_head)
    lr = default_lr(config) if lr is None else lr
    cache_bytes = None if feature_cache_mb is None else int(feature_cache_mb * 2**20)
    loader = {"cache_frozen_features": preset.cache_frozen_features, "cache_bytes": cache_bytes,
              "num_workers": num_workers}
    main = job.is_main  # rank 0 (or the only process) writes to the database
    try:
        dataset = DatabaseDataset(db, "train")
    except WorkbenchError as exc:
        if run_id is not None and main:
            registry.claim_run(db, run_id, {})
            registry.finish_run(db, run_id, RunStatus.failed, str(exc))
        raise
    sets = queries.category_sets(db)
    set_a = sorted(c for c, s in sets.items() if s == "A")
    set_b = sorted(c for c, s in sets.items() if s == "B")
    params = {"iterations": iterations, "image_size": image_size, "backbone": backbone, "seed": seed, "lr": lr,
              "backbone_weights": backbone_weights, "images": len(dataset), "categories": len(dataset.categories),
              "mode": mode, "mask_head": mask_head, "init": init, "set_A": set_a, "set_B": set_b,
              "batch_size": batch_size}
    if not main:
        return _train_other_rank(dataset, config, maskx, iterations=iterations, device=device, seed=seed, lr=lr,
                                 loader=loader)
    if run_id is None:
        run_id = registry.start_run(db, mode=mode, iterations=iterations, params=params)
    else:
        registry.claim_run(db, run_id, params)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=iterations, desc=f"training run {run_id} ({mode})", unit="it", file=sys.stderr,
                   dynamic_ncols=True)
    cancel = {"requested": False}

    def on_progress(progress: TrainProgress) -> None:
        loss = progress.losses.get("total", float("nan"))
        if bar is not None:
            bar.update(progress.iteration - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")
        if progress.iteration % PROGRESS_EVERY == 0 or progress.iteration == progress.iterations:
            cancel["requested"] = registry.record_progress(db, run_id, iteration=progress.iteration, loss=loss,
                                                           seconds=time.perf_counter() - start)

    start = time.perf_counter()
    try:
        model, started_from = _initial_model(db, config, dataset.categories, maskx, backbone_weights, init)
        model, summary = train_model(dataset, config, iterations=iterations, device=device, seed=seed, lr=lr,
                                     model=model, on_progress=on_progress, should_stop=lambda: cancel["requested"],
                                     **loader)
        if summary["stopped_early"]:
            registry.finish_run(db, run_id, RunStatus.cancelled, "cancelled")
            return TrainResult(run_id, None, None, summary["iterations"], True, None, time.perf_counter() - start)
        train_seconds = time.perf_counter() - start
        train_loss = summary["final_losses"].get("total")
        registry.record_progress(db, run_id, iteration=summary["iterations"], loss=float(train_loss or "nan"),
                                 message="evaluating on the reviewed val images")
        predictor = Predictor(model, config, dataset.categories, summary["device"])
        metrics = evaluate_on_val(db, predictor, mask_set=set(set_a)) or {}
        metrics.update({"train_loss": train_loss, "train_images": len(dataset), "train_seconds": round(train_seconds, 1),
                        "mode": mode, "mask_head": mask_head, "set_A": set_a, "set_B": set_b,
                        "started_from": started_from})
        checkpoint = registry.new_checkpoint_path(db, run_id)
        extra = {"run_id": run_id, "iterations": summary["iterations"], "seed": seed, "lr": lr, "mode": mode,
                 "train_loss": train_loss}
        if maskx is not None:
            extra["maskx"] = maskx.to_dict()
        save_checkpoint(checkpoint, model, config, dataset.categories, extra=extra)
        batch = f" x{batch_size}" if batch_size > 1 else ""
        version_id = registry.register_version(
            db, checkpoint, name=f"{backbone} {mode} {mask_head} {iterations} it{batch} @ {image_size}px",
            config=config.to_dict(), metrics=metrics, run_id=run_id, activate=True)
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
    return TrainResult(run_id, version_id, str(checkpoint), summary["iterations"], False, train_loss,
                       time.perf_counter() - start, metrics)


def _train_other_rank(dataset: DatabaseDataset, config: MNCConfig, maskx: MaskXConfig | None, *, iterations: int,
                      device: str | None, seed: int, lr: float, loader: dict) -> None:
    """A process of rank > 0 under torchrun: the same training loop without any database write. Its
    model only needs rank 0's architecture: DistributedDataParallel copies rank 0's weights into it
    (so it neither loads the active model nor downloads backbone weights)."""
    model = build_maskx_model(config, len(dataset.categories), maskx, "none")
    train_model(dataset, config, iterations=iterations, device=device, seed=seed, lr=lr, model=model, **loader)
    return None
