"""The training modes' presets: what one click trains (plain data, no torch: the CLI's help reads them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """What `launch.py train --mode M` without other flags and the UI's one-click Train run.

    The numbers are the study's choice (benchmarks/README.md, "recipe study"): chosen on a held-out part of the
    train split, sized to `cpu_minutes` of training on a 2-core CPU; where a GPU is found the run takes
    `gpu_iterations` (more iterations in less wall time)."""
    iterations: int                 # on a CPU
    gpu_iterations: int             # on a GPU
    image_size: int                 # short side in pixels
    config: tuple[tuple[str, object], ...]  # MNCConfig changes of the mode
    freeze_body: bool               # the whole backbone body frozen (else the backbone's default blocks train)
    cache_frozen_features: bool     # the frozen blocks' output computed once per input and reused
    cpu_minutes: float              # training time of the preset on the 2-core CPU (for the UI's estimate)
    description: str

    def iterations_on(self, device_type: str) -> int:
        return self.gpu_iterations if device_type == "cuda" else self.iterations


PRESETS = {
    # heads: the study's choice (benchmarks/README.md, "recipe study"); 2200 iterations fill 10 min on the 2-core CPU
    "heads": Preset(iterations=2200, gpu_iterations=12000, image_size=800,
                    config=(("num_stages", 3), ("roi_batch_size", 32), ("test_score", "cls"),
                            ("inference_stages", 5)),
                    freeze_body=True, cache_frozen_features=True, cpu_minutes=10.0,
                    description="the backbone body frozen, its features computed once per photo and reused; "
                                "the fast path on a CPU"),
    # full: not chosen by the study (end-to-end costs 3-4x a heads iteration on the 2-core CPU); cpu_minutes is
    # an estimate from that ratio, not a measurement; the Train tab uses the machine's own pace after one run
    "full": Preset(iterations=2000, gpu_iterations=20000, image_size=600, config=(), freeze_body=False,
                   cache_frozen_features=False, cpu_minutes=40.0,
                   description="end-to-end: the backbone fine-tunes from its 5th block on"),
}
