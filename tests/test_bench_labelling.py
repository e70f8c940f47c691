"""The simulated labeller (benchmarks/bench_labelling.py) runs end to end on a tiny setting, through the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_simulated_labeller_runs_on_a_tiny_setting(coco_subset, tmp_path):
    work = tmp_path / "labelling"
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "benchmarks/bench_labelling.py", "--work", str(work), "--data",
                           str(coco_subset), "--pool", "4", "--round-size", "2", "--rounds", "2", "--iterations", "2",
                           "--image-size", "128", "--settings", "nomodel,loop-useful"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((work / "results.json").read_text())
    nomodel, loop = results["settings"]
    assert [s["setting"] for s in results["settings"]] == ["nomodel", "loop-useful"]
    first = nomodel["rounds"][0]
    # no model: every true instance is added by a box, nothing is proposed
    assert first["actions"]["box"] == first["instances"] > 0 and first["proposals"] == 0
    assert first["seconds"] == 7.0 * first["actions"]["box"] + 1.5 * first["actions"]["click"]
    assert loop["rounds"][0]["version"] is not None and len(loop["rounds"]) == 2
    assert 0.0 < nomodel["final_mean_iou"] <= 1.0 and nomodel["final_instances"] == sum(
        r["instances"] for r in nomodel["rounds"])
    # the workbench recorded the same work: hand-made instances and the visits' active time
    help_ = {v["version"]: v for v in loop["model_help"]["versions"]}
    assert help_["no model"]["hand"] == loop["rounds"][0]["instances"]
    assert help_["no model"]["active_seconds"] == loop["rounds"][0]["seconds"]
    assert "| nomodel | 1 |" in done.stdout
