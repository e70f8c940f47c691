#!/usr/bin/env bash
# The GPU checks of the MNC core in one short run (a few minutes on one H100/H200), figures as JSON in OUT.
#
#   benchmarks/gpu_check.sh OUT [--device cuda|cpu] [--quick] [--data DIR] [--weights FILE] [--wheels DIR]
#
#   1. tests: the CUDA tests and the post-processing tests      -> OUT/tests.txt
#   2. latency: 5-stage MNC with voting vs torchvision Mask R-CNN -> OUT/latency.json (bench_mnc_latency.py)
#   3. throughput: batched inference, training per mode and batch, input pipeline
#                                                                 -> OUT/throughput.json (bench_throughput.py)
#   4. a 1-process DDP run of `launch.py train` under torchrun (NCCL on a GPU, gloo on a CPU) on a small
#      synthetic database                                         -> OUT/ddp.txt
#   5. compile: torch.compile'd backbone and heads vs eager, alternately in one process
#                                                                 -> OUT/compile.json (bench_compile.py)
#   and OUT/summary.json: each step's exit status and seconds, the device, the versions.
#
# --device cpu --quick checks the script itself on a CPU (tiny sizes). --data / --weights: coco_subset and
# the ImageNet MobileNetV2 file (default ../shared/...; a device machine gets only the repository, so copy
# them into an ignored folder of it and carry that). --wheels: a folder of wheels for what the machine's
# Python lacks (pycocotools, sqlalchemy, alembic, mako, markupsafe for Python 3.12: `pip download ... -d DIR
# --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64`); installed into OUT/../site
# for this run only. A step that fails is recorded and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_check.sh OUT [--device cuda|cpu] [--quick] [--data DIR] [--weights FILE] [--wheels DIR]}
shift
device=cuda quick="" data=../shared/data/coco_subset weights=../shared/weights/mobilenet_v2-b0353104.pth wheels=""
while [ $# -gt 0 ]; do
    case $1 in
        --device) device=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --data) data=$2; shift 2 ;;
        --weights) weights=$2; shift 2 ;;
        --wheels) wheels=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1
python=${PYTHON:-$(command -v python3 || command -v python)}
if [ -n "$wheels" ]; then
    site="$out/../site"
    "$python" -m pip install --quiet --no-index --no-deps --target "$site" "$wheels"/*.whl || echo "warning: wheels not installed" >&2
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The packages come from the installed project (`pip install -r requirements.txt` installs it, editable); a
# machine that has only the repository and its Python (a device machine) gets this checkout on PYTHONPATH instead.
if ! (cd / && "$python" -c 'import launch, mnc_core' 2>/dev/null); then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
steps=()

step() {  # step NAME COMMAND...: runs it, records its exit status and seconds
    local name=$1; shift
    local start=$(date +%s%N)
    echo "=== $name: $*"
    "$@"
    local rc=$?
    local end=$(date +%s%N)
    steps+=("$name $rc $(( (end - start) / 1000000 ))")
    echo "=== $name: exit $rc"
}

if [ "$device" = cuda ]; then nvidia-smi -L > "$out/gpu.txt" 2>&1; fi

step tests bash -c "'$python' -m pytest -q -p no:cacheprovider tests/test_mnc_cuda.py tests/test_postprocess.py \
    tests/test_mnc_roi_warp.py -rs 2>&1 | tee '$out/tests.txt'"

if [ -n "$quick" ]; then
    latency=(--images 1 --warmup 0)
    throughput=(--quick)
    compile=(--images 1 --warmup 1 --repeats 1)
    ddp_iterations=2
else
    latency=(--images 20 --warmup 3)
    throughput=()
    compile=(--images 5 --warmup 3 --repeats 3)
    ddp_iterations=20
fi
step latency "$python" benchmarks/bench_mnc_latency.py --device "$device" --data "$data" --weights "$weights" \
    "${latency[@]}" --json "$out/latency.json"
step throughput "$python" benchmarks/bench_throughput.py --device "$device" --data "$data" --weights "$weights" \
    "${throughput[@]}" --out "$out/throughput.json"

ddp_dir=$(mktemp -d)
step ddp bash -c "ann=\$(cd tests && '$python' -c 'from conftest import make_synthetic_coco; \
from pathlib import Path; print(make_synthetic_coco(Path(\"$ddp_dir/coco\"), n_images=8, seed=1))') && \
'$python' launch.py import-coco \"\$ann\" --images '$ddp_dir/coco/images' --data-dir '$ddp_dir/data' && \
'$python' -m torch.distributed.run --standalone --nproc_per_node 1 launch.py train --iterations $ddp_iterations \
    --image-size 128 --backbone-weights none --device $device --init backbone --data-dir '$ddp_dir/data' 2>&1 \
    | tee '$out/ddp.txt' && grep -q 'distributed training under torchrun: 1 process' '$out/ddp.txt' \
    && grep -q 'is now active' '$out/ddp.txt'"
rm -rf "$ddp_dir"

# last: torch.compile's first compilation may take a minute or two
step compile "$python" benchmarks/bench_compile.py --device "$device" --data "$data" --weights "$weights" \
    "${compile[@]}" --json "$out/compile.json"

"$python" - "$out" "$device" "${steps[@]}" <<'EOF'
import json, platform, sys, time
import torch
out, device, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
summary = {"finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "device": device,
           "device_name": torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available()
           else platform.processor() or platform.machine(),
           "torch": torch.__version__, "python": platform.python_version(),
           "steps": {name: {"exit": int(rc), "seconds": round(int(ms) / 1000, 1)}
                     for name, rc, ms in (s.split() for s in steps)}}
with open(f"{out}/summary.json", "w") as f:
    json.dump(summary, f, indent=1)
print(json.dumps(summary, indent=1))
EOF
