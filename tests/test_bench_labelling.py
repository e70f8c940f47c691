"""The simulated labeller (benchmarks/bench_labelling.py) runs end to end on a tiny setting, through the API,
paired: the loop labels the same photos in the same order as no-model, and its rounds carry the paired ratio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_paired_labeller_runs_on_a_tiny_setting(coco_subset, tmp_path):
    work, out = tmp_path / "labelling", tmp_path / "out.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "benchmarks/bench_labelling.py", "--work", str(work),
                           "--annotations", str(coco_subset / "train.json"), "--images", str(coco_subset / "images"),
                           "--classes", "person,car", "--pool", "4", "--round-size", "2", "--rounds", "2",
                           "--iterations", "2", "--image-size", "128", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    nomodel, loop = results["settings"]
    assert [s["setting"] for s in results["settings"]] == ["nomodel", "loop"]
    first = nomodel["rounds"][0]
    # no model: every labelled instance is added by a box, nothing is proposed; both cost models priced
    assert first["actions"]["box"] == first["instances"] > 0 and first["shown_proposals"] == 0
    for model, box_s in (("extreme_7s", 7.0), ("drag_34.5s", 34.5)):
        assert first["seconds_by_cost_model"][model] == round(box_s * first["actions"]["box"]
                                                              + 1.5 * first["actions"]["click"], 1)
    # paired: the same photos in the same order, round by round, and the ratio of their seconds
    assert [r["files"] for r in loop["rounds"]] == [r["files"] for r in nomodel["rounds"]]
    for row, reference in zip(loop["rounds"], nomodel["rounds"]):
        assert row["paired_ratio"] == round(row["seconds"] / reference["seconds"], 3)
        assert 0.0 <= row["label_iou"] <= 1.0 and "seconds_per_instance" in row
    assert loop["rounds"][0]["version"] is not None and len(loop["rounds"]) == 2
    assert loop["rounds"][0]["paired_ratio"] == 1.0  # round 1 has no model: the same work
    assert 0.0 < nomodel["label_iou"] <= 1.0 and nomodel["instances"] == sum(r["instances"] for r in nomodel["rounds"])
    # the workbench recorded the same work: hand-made instances and the visits' active time
    help_ = {v["version"]: v for v in loop["model_help"]["versions"]}
    assert help_["no model"]["hand"] == loop["rounds"][0]["instances"]
    assert help_["no model"]["active_seconds"] == loop["rounds"][0]["seconds"]
    assert "| nomodel | 1 |" in done.stdout and "| loop | 2 |" in done.stdout
