#!/usr/bin/env bash
# The GPU quality recipe on one GPU: `denoise-dist train --recipe gpu-5min` at sigma 0.5,
# then `denoise-dist evaluate` on all 10,000 MNIST test images. Prints the wall time, the
# training time and the test PSNR/SSIM (goal: >= 22.0 dB at sigma 0.5 within 5 minutes).
# The recipe's settings were chosen without a GPU at hand: this script is its measurement.
#
#   DENOISE_DIST_DATA=/path/with/MNIST/raw PYTHONPATH=$PWD benchmarks/gpu_recipe.sh
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-/tmp/gpu-recipe}
shift || true  # the rest: more train flags (for example --compile)
export WANDB_MODE=disabled
rm -rf "$RUN"
SECONDS=0
timeout "${RECIPE_TRAIN_TIMEOUT:-420}" python -m denoise_dist train --recipe gpu-5min --output-dir "$RUN" "$@"
echo "train exit $?, ${SECONDS} s wall"
timeout 120 python -m denoise_dist evaluate "$RUN" --sigmas 0.5 --out "$RUN/eval"
python - "$RUN" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
[row] = json.loads((run / "eval" / "eval.json").read_text())["results"]
print(f"gpu-5min: {summary['step']} steps, {summary['train_time_s']:.0f} s of training "
      f"on {summary['device']} ({summary['precision']}); test sigma 0.5: PSNR "
      f"{row['model']['psnr']:.2f} dB, SSIM {row['model']['ssim']:.3f} (goal 22.0 dB)")
PY
