"""The training choices, listed once: the modes' presets, mask heads and starts (the backbones are
mnc_core.config's), and the typed spec of one run (plain data: the command line's help and the UI read them).

`launch.py train`'s flags and the UI's Train tab both become a :class:`TrainingSpec`; a run started from
the UI stores its spec with the queued run, and the training process reads it back from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from db.errors import WorkbenchError
from mnc_core.config import BACKBONES


@dataclass(frozen=True)
class Preset:
    """What `launch.py train --mode M` without other flags and the UI's one-click Train run.

    The numbers are the study's choice (benchmarks/README.md, "recipe study"): chosen on a held-out part of the
    train split, sized to the time the study's single-scale preset took (its pace on one CPU is in
    benchmarks/README.md, not here: the Train tab announces times from this machine's own pace); where a GPU is
    found the run takes `gpu_iterations` (more iterations in less wall time)."""
    iterations: int                 # on a CPU
    gpu_iterations: int             # on a GPU
    image_size: int                 # short side in pixels
    config: tuple[tuple[str, object], ...]  # MNCConfig changes of the mode
    freeze_body: bool               # the whole backbone body frozen (else the backbone's default blocks train)
    cache_frozen_features: bool     # the frozen blocks' output computed once per input and reused
    description: str

    def iterations_on(self, device_type: str) -> int:
        return self.gpu_iterations if device_type == "cuda" else self.iterations


PRESETS = {
    # heads: the study's choice (benchmarks/README.md, "recipe study" and "multi-scale MNC"): the multi-scale model at
    # 800 px (600 px was worse on the select split at equal time), 1870 iterations: the time 2200 of the single-scale
    # model took (an iteration costs 1.18x)
    "heads": Preset(iterations=1870, gpu_iterations=12000, image_size=800,
                    config=(("num_stages", 3), ("roi_batch_size", 32), ("test_score", "cls"),
                            ("inference_stages", 5)),
                    freeze_body=True, cache_frozen_features=True,
                    description="the backbone body frozen, its features computed once per photo and reused; "
                                "the fast path on a CPU"),
    # full: not chosen by the study (end-to-end costs 3-4x a heads iteration, benchmarks/README.md)
    "full": Preset(iterations=2000, gpu_iterations=20000, image_size=600, config=(), freeze_body=False,
                   cache_frozen_features=False,
                   description="end-to-end: the backbone fine-tunes from its 5th block on"),
}

MODES = tuple(PRESETS)
MASK_HEADS = ("transfer", "agnostic", "none")  # Mask^X transfer | class-agnostic baseline | plain MNC masks
INITS = ("auto", "active", "backbone")  # auto: the active model when it is compatible, else the backbone weights


@dataclass(frozen=True)
class TrainingSpec:
    """One training run's choices. iterations / image_size None: the mode's preset (its iterations for the
    device the run finds); lr None: the model's default, scaled with batch_size; num_workers None: one
    data-loading process per spare core; feature_cache_mb None: the device's default budget; low_priority:
    the process yields the CPU to everything else (the UI's runs, so that the server stays responsive)."""

    mode: str = "heads"
    iterations: int | None = None
    image_size: int | None = None
    backbone: str = "mobilenet_v2"
    backbone_weights: str | None = None
    device: str | None = None
    seed: int = 0
    lr: float | None = None
    mask_head: str = "transfer"
    init: str = "auto"
    batch_size: int = 1
    num_workers: int | None = None
    feature_cache_mb: float | None = None
    low_priority: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (("mode", self.mode, MODES), ("mask head", self.mask_head, MASK_HEADS),
                                     ("init", self.init, INITS), ("backbone", self.backbone, BACKBONES)):
            if value not in choices:
                raise WorkbenchError(f"the {name} must be one of {', '.join(choices)}, not {value!r}")
        if self.iterations is not None and self.iterations < 1:
            raise WorkbenchError("iterations must be at least 1")
        if self.image_size is not None and self.image_size < 32:
            raise WorkbenchError("the image size must be at least 32 pixels")
        if self.batch_size < 1:
            raise WorkbenchError("the batch size must be at least 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise WorkbenchError("the number of data-loading workers cannot be negative")

    @property
    def preset(self) -> Preset:
        return PRESETS[self.mode]

    def planned_iterations(self, device_type: str) -> int:
        return self.preset.iterations_on(device_type) if self.iterations is None else self.iterations

    def planned_image_size(self) -> int:
        return self.preset.image_size if self.image_size is None else self.image_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise WorkbenchError(f"unknown training settings {', '.join(unknown)}")
        return cls(**values)
