#!/usr/bin/env bash
# The GPU checks, in one call on a CUDA machine (docs/findings/gpu.md holds the figures they gave):
#
#   tools/gpu_check.sh OUT [BUDGET_S] [full|tiny] [all|grid]
#
# 1. environment (GPU, library versions); 2. the two synthetic sets (4000 images at 128 and at 224 px), with
# `pytest -m gpu` beside them; 3. ResNet-18 trained alone at 128 px and at 224 px (training speed, bf16 autocast
# and channels-last); 4. the 128 px run exported to ONNX FP32/FP16/INT8 and benchmarked with `--device cuda`
# (PyTorch eager FP32/FP16/BF16, the same as CUDA graphs); 5. the localisation grid, several jobs at a time on the one
# GPU: the six CNNs at 224 px (4 epochs, seeds 42, 1-5, one seed of all six after another), each job training
# one backbone and then running `cxr-edge fidelity --method auto`; 6. the bench again with `--compile`, in the
# time left. `grid` runs 1, 2 (no tests) and 5 alone.
# Every phase is cut at the budget's deadline; what finished is packed into OUT/gpu.tar.gz (paths under
# /tmp/gpu-runs, so that the fidelity JSON files' run paths resolve once unpacked at / here).
# `tiny` runs the same steps at toy size on the CPU, to check the script before spending device time.
set -uo pipefail
out=${1:?usage: tools/gpu_check.sh OUT [BUDGET_S] [full|tiny] [all|grid]}
budget=${2:-500}
scale=${3:-full}
phases=${4:-all}
mkdir -p "$out"
out=$(cd "$out" && pwd)
deadline=$(($(date +%s) + budget))
work=/tmp/gpu-runs
rm -rf "$work"
mkdir -p "$work/logs" "$work/fid"
export CXR_EDGE_CACHE=$work/cache PYTHONUNBUFFERED=1 COLUMNS=220 work deadline
export PY=${PY:-python3}
if [ "$scale" = tiny ]; then
    export n=200 s2=64 fn=8 dev=cpu par=2 bench_batches=1,4
else
    export n=4000 s2=224 fn=128 dev=cuda par=8 bench_batches=1,32
fi

left() { echo $((deadline - $(date +%s))); }
cx() { "$PY" -m cli.main "$@"; }
log() { echo "[$(date -u +%H:%M:%S) left $(left)s] $*" | tee -a "$work/logs/summary.txt"; }
export -f left cx log

pack() {
    log "packing"
    (cd / && find "${work#/}" \( -name run.json -o -name split.json -o -name 'fidelity*.json' -o -path '*/fid/*.json' \
        -o -path '*/logs/*' -o -path '*/bench*/*' \) -type f -not -name '*.onnx' -print0 |
        tar -czf "$out/gpu.tar.gz" --null -T -)
    cp "$work/logs/summary.txt" "$out/summary.txt"
}
trap pack EXIT

# 1. environment
log "environment"
{
    nvidia-smi -L 2>&1 || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
    "$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for p in ("timm", "grad-cam", "numpy", "scikit-learn", "onnx", "onnxruntime", "onnxscript", "typer", "scipy"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "absent")
EOF
    nproc
} > "$work/logs/env.txt" 2>&1
cat "$work/logs/env.txt"

# 2. synthetic sets (CPU) beside the GPU tests
log "synthetic sets and pytest -m gpu"
cx data synth --n-images "$n" --size 128 --no-progress > "$work/logs/synth128.txt" 2>&1 &
cx data synth --n-images "$n" --size "$s2" --no-progress > "$work/logs/synth$s2.txt" 2>&1 &
[ "$phases" = grid ] || timeout $(($(left) - 60)) "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/bench/test_backends.py \
    tests/export/test_tensorrt.py > "$work/logs/pytest-gpu.txt" 2>&1
[ "$phases" = grid ] || log "pytest -m gpu: $(tail -1 "$work/logs/pytest-gpu.txt")"
wait
d128=$(tail -1 "$work/logs/synth128.txt")/manifest.csv
d2=$(tail -1 "$work/logs/synth$s2.txt")/manifest.csv
export d128 d2
log "sets: $d128 $d2"

# one job: train one backbone, then its fidelity with --method auto (NAME BACKBONE SEED SIZE EPOCHS PATIENCE DATA)
job() {
    local name=$1 b=$2 seed=$3 size=$4 epochs=$5 patience=$6 data=$7 rem t
    rem=$(($(left) - 30))
    if [ "$rem" -lt 30 ]; then log "skipped $name $b: out of time"; return 0; fi
    t=$(date +%s)
    if ! timeout "$rem" "$PY" -m cli.main train-all -b "$b" --size "$size" --epochs "$epochs" --patience "$patience" \
        --seed "$seed" -d "$data" --out "$work/$name" --device "$dev" --threads 2 --no-progress \
        > "$work/logs/$name-$b.train.txt" 2>&1; then
        log "train FAILED $name $b: $(tail -2 "$work/logs/$name-$b.train.txt" | tr '\n' ' ')"
        return 0
    fi
    log "trained $name $b in $(($(date +%s) - t)) s"
    rem=$(($(left) - 30))
    if [ "$rem" -lt 20 ]; then log "no fidelity for $name $b: out of time"; return 0; fi
    t=$(date +%s)
    if timeout "$rem" "$PY" -m cli.main fidelity "$work/$name/$b" --method auto --n "$fn" --no-road --device "$dev" \
        --out "$work/fid/$name-$b.json" > "$work/logs/$name-$b.fid.txt" 2>&1; then
        log "fidelity $name $b in $(($(date +%s) - t)) s"
    else
        log "fidelity FAILED $name $b: $(tail -2 "$work/logs/$name-$b.fid.txt" | tr '\n' ' ')"
    fi
}
export -f job

if [ "$phases" != grid ]; then
    # 3. training speed, one job alone on the GPU
    log "solo training"
    job A-s42 resnet18 42 128 4 5 "$d128"
    job B-s42 resnet18 42 "$s2" 4 5 "$d2"

    # 4. latency on the GPU: eager and CUDA graphs
    log "export and bench"
    if timeout $(($(left) - 60)) "$PY" -m cli.main export "$work/A-s42" --out "$work/art" -f onnx -p fp32,fp16,int8 \
        --n-calibration 128 --keep-going --no-progress > "$work/logs/export.txt" 2>&1; then
        common=(--runs "$work/A-s42" --device "$dev" --batches "$bench_batches" --budget-s 1 --n-boot 200
                --fidelity-n 8 --no-progress)
        timeout 150 "$PY" -m cli.main bench "$work/art" "${common[@]}" --out "$work/bench-$dev" \
            > "$work/logs/bench.txt" 2>&1 || log "bench FAILED or cut: $(tail -2 "$work/logs/bench.txt" | tr '\n' ' ')"
    else
        log "export FAILED: $(tail -2 "$work/logs/export.txt" | tr '\n' ' ')"
    fi
fi

# 5. the localisation grid: the six CNNs at 224 px, 4 epochs (ResNet-18 pointed 0.99 there on the CPU, seed 42)
log "grid"
for seed in 42 1 2 3 4 5; do
    for b in resnet18 resnet50 densenet121 efficientnet_b0 mobilenetv2_100 mobilenetv3_large_100; do
        [ -d "$work/B-s$seed/$b" ] || echo "B-s$seed $b $seed $s2 4 5 $d2"
    done
done > "$work/jobs.txt"
xargs -P "$par" -L 1 bash -c 'job "$@"' _ < "$work/jobs.txt"

# 6. torch.compile rows, with the time that is left (compilation is slow; the eager bench above comes first)
if [ "$phases" != grid ] && [ -f "$work/art/manifest.json" ] && [ "$(left)" -gt 60 ]; then
    log "bench --compile"
    timeout $(($(left) - 15)) "$PY" -m cli.main bench "$work/art" "${common[@]}" --compile --out "$work/bench-$dev-compile" \
        > "$work/logs/bench-compile.txt" 2>&1 || log "bench --compile FAILED or cut: $(tail -2 "$work/logs/bench-compile.txt" | tr '\n' ' ')"
fi
log "done"
