#!/usr/bin/env bash
# Everything that needs a GPU, in one go, in about 5 minutes on one H100 or H200:
#   1. the gpu test tier (tests/gpu: main job in fp32/bf16/fp16, bit-exact resume,
#      evaluate/denoise/load_model on the GPU, too many processes, compiled vs eager);
#   2. the default `denoise-dist train`, timed from outside, with its per-phase breakdown;
#   3. throughput at batch 128 (unet, seed_ae) against DataLoader pipelines of the same
#      model: 0 workers, and tuned (8 workers, pin_memory); ours eager and compiled.
# Then one table. Every step has its own time limit, so a hang or a failure still leaves
# a table. Logs and results go to $OUT/gpu_check.tar.gz when $OUT is set (the device
# tool's output folder), else to /tmp/gpu_check.
#
#   DENOISE_DIST_DATA=/path/with/MNIST/raw PYTHONPATH=$PWD benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=$(mktemp -d /tmp/gpu_check.XXXX)
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
START=$(date +%s)
stamp() { echo "[gpu_check $(( $(date +%s) - START )) s] $*"; }

stamp "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'accelerate', accelerate.__version__)"
} > "$LOGS/device.txt" 2>&1
cat "$LOGS/device.txt"

stamp "1. gpu test tier"
timeout 170 python -m pytest tests/gpu -m gpu -q -rA -p no:cacheprovider > "$LOGS/gpu_tier.log" 2>&1
echo "exit $?" >> "$LOGS/gpu_tier.log"
tail -n 15 "$LOGS/gpu_tier.log"

stamp "2. the default job"
rm -rf "$LOGS/default-run"
/usr/bin/time -f "%e" -o "$LOGS/default_wall.txt" timeout 120 \
    python -m denoise_dist train --output-dir "$LOGS/default-run" > "$LOGS/default_run.log" 2>&1
tail -n 3 "$LOGS/default_run.log"

stamp "3. throughput"
for model in unet seed_ae; do
    timeout 110 python benchmarks/throughput.py --device cuda --model "$model" --rounds 1 \
        --steps 300 --workers 0 8 --variants eager compile --json "$LOGS/throughput_$model.json" \
        > "$LOGS/throughput_$model.log" 2>&1
    tail -n 6 "$LOGS/throughput_$model.log"
done

stamp "table"
python - "$LOGS" <<'PY' | tee "$LOGS/table.txt"
import json, re, sys
from pathlib import Path
logs = Path(sys.argv[1])
device = (logs / "device.txt").read_text().strip().splitlines()
print(f"device: {' | '.join(device)}")
tier = (logs / "gpu_tier.log").read_text()
counts = re.findall(r"(\d+) (passed|failed|skipped|error)", tier)
print(f"gpu tier: {', '.join(f'{n} {what}' for n, what in counts) or 'no result'} "
      f"({tier.strip().splitlines()[-1]})")
for line in tier.splitlines():
    if line.startswith(("FAILED", "ERROR")):
        print("  " + line[:160])
wall = (logs / "default_wall.txt")
summary = logs / "default-run" / "summary.json"
if summary.exists():
    s = json.loads(summary.read_text())
    phases = ", ".join(f"{k} {v:.1f}" for k, v in s.get("timings_s", {}).items())
    print(f"default train: {wall.read_text().strip() if wall.exists() else '?'} s wall, "
          f"val PSNR {s['val_psnr']:.2f} dB (noisy {s['val_psnr_noisy']:.2f}); phases (s): {phases}")
else:
    print("default train: no summary (see default_run.log)")
print(f"{'model':<9}{'pipeline':<20}{'images/s':>10}{'vs dataloader-8':>17}")
for model in ("unet", "seed_ae"):
    path = logs / f"throughput_{model}.json"
    if not path.exists():
        print(f"{model:<9}no result (see throughput_{model}.log)")
        continue
    medians = json.loads(path.read_text())["median_images_per_s"]
    tuned = medians.get("dataloader-8")
    for pipeline, value in medians.items():
        ratio = f"{value / tuned:.2f}x" if tuned else "-"
        print(f"{model:<9}{pipeline:<20}{value:>10.0f}{ratio:>17}")
PY
stamp "done"
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_check.tar.gz" -C "$LOGS" --exclude "default-run/checkpoints" .
    cp "$LOGS/table.txt" "$OUT/table.txt"
fi
