#!/usr/bin/env bash
# Everything that needs a GPU, in one go, on one H100 or H200:
#   1. the default `denoise-dist train`, timed from outside, with its per-phase breakdown;
#   2. throughput at batch 128 (unet, seed_ae) against DataLoader pipelines of the same
#      model (tuned: 8 workers and pin_memory), ours eager and compiled;
#   3. the gpu test tier (tests/gpu), in parallel groups: main job in fp32/bf16/fp16,
#      bit-exact resume and too many processes, evaluate/denoise/load_model, compiled vs
#      eager, and any test that none of these names.
# Timings (1, 2) run alone on the machine. Then one table. Every step has its own time
# limit, so a hang or a failure still leaves a table. Logs and results go to
# $OUT/gpu_check.tar.gz when $OUT is set (the device tool's output folder).
#
#   DENOISE_DIST_DATA=/path/with/MNIST/raw PYTHONPATH=$PWD benchmarks/gpu_check.sh
#
# GPU_CHECK_SECONDS (560) bounds the whole; GPU_CHECK_DEVICE=cpu GPU_CHECK_STEPS=20 is a
# dry run of the script itself on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=$(mktemp -d /tmp/gpu_check.XXXX)
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-560}))
stamp() { echo "[gpu_check $(( $(date +%s) - START )) s] $*"; }
left() { echo $(( DEADLINE - $(date +%s) )); }

stamp "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'accelerate', accelerate.__version__)"
} > "$LOGS/device.txt" 2>&1
cat "$LOGS/device.txt"

stamp "1. the default job"
/usr/bin/time -f "%e" -o "$LOGS/default_wall.txt" timeout 90 \
    python -m denoise_dist train --output-dir "$LOGS/default-run" > "$LOGS/default_run.log" 2>&1
tail -n 3 "$LOGS/default_run.log"

stamp "2. throughput"
timeout 200 python benchmarks/throughput.py --device "${GPU_CHECK_DEVICE:-cuda}" --model unet --rounds 1 \
    --steps "${GPU_CHECK_STEPS:-1000}" --workers 8 --variants eager compile --json "$LOGS/throughput_unet.json" \
    > "$LOGS/throughput_unet.log" 2>&1
tail -n 5 "$LOGS/throughput_unet.log"
timeout 200 python benchmarks/throughput.py --device "${GPU_CHECK_DEVICE:-cuda}" --model seed_ae --rounds 1 \
    --steps "${GPU_CHECK_STEPS:-1000}" --workers 8 --variants eager compile --json "$LOGS/throughput_seed_ae.json" \
    > "$LOGS/throughput_seed_ae.log" 2>&1
tail -n 5 "$LOGS/throughput_seed_ae.log"

stamp "3. gpu test tier ($(left) s left)"
TIER_TIMEOUT=$(( $(left) < 300 ? $(left) - 10 : 300 ))
GROUPS_K=("main_job" "resume or more_processes" "evaluate_on or load_model" "compiled_step")
printf -v JOINED '%s or ' "${GROUPS_K[@]}"
GROUPS_K+=("not (${JOINED% or })")  # whatever the others miss
group=0 TIER=()
for selection in "${GROUPS_K[@]}"; do
    group=$((group + 1))
    timeout "$TIER_TIMEOUT" python -m pytest tests/gpu -m gpu -k "$selection" -q -rA \
        -p no:cacheprovider --basetemp "$LOGS/tier$group" > "$LOGS/gpu_tier$group.log" 2>&1 &
    TIER+=($!)
done
wait "${TIER[@]}"
for g in $(seq "$group"); do tail -n 4 "$LOGS/gpu_tier$g.log"; done

stamp "table"
python - "$LOGS" <<'PY' | tee "$LOGS/table.txt"
import json, re, sys
from pathlib import Path
logs = Path(sys.argv[1])
device = (logs / "device.txt").read_text().strip().splitlines()
print(f"device: {' | '.join(device)}")
wall = logs / "default_wall.txt"
summary = logs / "default-run" / "summary.json"
if summary.exists():
    s = json.loads(summary.read_text())
    phases = ", ".join(f"{k} {v:.1f}" for k, v in s.get("timings_s", {}).items())
    print(f"default train: {wall.read_text().strip().splitlines()[-1] if wall.exists() else '?'} s wall, "
          f"val PSNR {s['val_psnr']:.2f} dB (noisy {s['val_psnr_noisy']:.2f}), "
          f"{s['precision']}; phases (s): {phases}")
else:
    print("default train: no summary (see default_run.log)")
print(f"{'model':<9}{'pipeline':<16}{'images/s':>10}{'vs dataloader-8':>17}{'wall s':>8}")
for model in ("unet", "seed_ae"):
    path = logs / f"throughput_{model}.json"
    if not path.exists():
        print(f"{model:<9}no result (see throughput_{model}.log)")
        continue
    result = json.loads(path.read_text())
    medians, tuned = result["median_images_per_s"], result["median_images_per_s"].get("dataloader-8")
    for pipeline, value in medians.items():
        ratio = f"{value / tuned:.2f}x" if tuned else "-"
        wall_s = result["rounds"][pipeline][0][1]
        print(f"{model:<9}{pipeline:<16}{value:>10.0f}{ratio:>17}{wall_s:>8.1f}")
passed = failed = 0
for tier in sorted(logs.glob("gpu_tier*.log")):
    text = tier.read_text()
    passed += len(re.findall(r"^PASSED", text, re.M))
    failed += len(re.findall(r"^(?:FAILED|ERROR)", text, re.M))
    for line in text.splitlines():
        if line.startswith(("FAILED", "ERROR")) or "Timeout" in line:
            print("  " + line[:200])
print(f"gpu tier: {passed} passed, {failed} failed or errors")
PY
stamp "done"
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_check.tar.gz" -C "$LOGS" --exclude "*/checkpoints" \
        --exclude "*.safetensors" --exclude "tier*/*/*/checkpoints" .
    cp "$LOGS/table.txt" "$OUT/table.txt"
fi
