"""The table behind docs/scaling.md: data-parallel all-reduce time against step compute
time, on paper, for 2-64 GPUs over NVLink and InfiniBand.

    python benchmarks/scaling_note.py [--results benchmarks/results/h100-2026-11-26]
        [--nvlink-gbps 450] [--ib-gbps 50] [--alpha-nvlink-us 2] [--alpha-ib-us 5]

Inputs, and where each comes from:
- gradient size: the parameters of every registered model at its default settings,
  counted here, in fp32 (DDP all-reduces the gradients in the parameters' dtype; under
  bf16 autocast the parameters stay fp32);
- compute time per step: 128 / images-per-s of one H100 at batch 128, from the
  throughput_<model>.json files in --results (measured by benchmarks/throughput.py);
  models without such a file get communication figures only;
- bandwidth per GPU and direction: NVLink 4 on an H100 SXM, 900 GB/s in total (NVIDIA H100
  Tensor Core GPU datasheet), i.e. 450 GB/s each way; InfiniBand NDR, 400 Gb/s per port
  (NVIDIA ConnectX-7 datasheet; a DGX H100 has one port per GPU), i.e. 50 GB/s each way.
  Both are peaks: NCCL reaches less (nccl-tests' doc/PERFORMANCE.md explains its "bus
  bandwidth", which is what these peaks should be compared with);
- latency per ring step: an assumption (2 us NVLink, 5 us InfiniBand), not a measurement;
  replace it with your cluster's small-message time from nccl-tests' all_reduce_perf.

The model: a ring all-reduce of S bytes over W GPUs takes 2(W-1) steps, each sending
S/W bytes per GPU, so T = 2 (W-1)/W * S / B + 2 (W-1) * alpha. Compute and communication
are added (no overlap with the backward pass), so the shares printed are upper bounds on
the time lost to communication.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from denoise_dist.config import ModelConfig
from denoise_dist.models import MODELS, build_model, model_kwargs

BATCH = 128  # the batch of the measured H100 figures
WORLD_SIZES = (2, 4, 8, 16, 32, 64)
BYTES_PER_GRADIENT = 4  # fp32


def gradient_bytes(name: str) -> int:
    settings = ModelConfig()
    for field, value in MODELS[name].defaults.items():
        setattr(settings, field, value)
    model = build_model(name, **model_kwargs(name, settings))
    return BYTES_PER_GRADIENT * sum(p.numel() for p in model.parameters() if p.requires_grad)


def step_times_ms(results: Path, name: str) -> dict[str, float]:
    """Compute time per step at batch 128 by pipeline (eager, compiled), if measured."""
    path = results / f"throughput_{name}.json"
    if not path.is_file():
        return {}
    medians = json.loads(path.read_text())["median_images_per_s"]
    pipelines = {"ours-eager": "eager", "ours-compile": "compiled"}
    return {label: 1e3 * BATCH / medians[key] for key, label in pipelines.items() if key in medians}


def allreduce_ms(size: int, world: int, bandwidth_gb_s: float, alpha_us: float) -> float:
    bandwidth_term = 2 * (world - 1) / world * size / (bandwidth_gb_s * 1e9)
    latency_term = 2 * (world - 1) * alpha_us * 1e-6
    return 1e3 * (bandwidth_term + latency_term)


def first_dominated(size, bandwidth, alpha, compute_ms, strong: bool) -> str:
    """The smallest world size whose all-reduce takes at least the step's compute time."""
    for world in range(2, 1025):
        compute = compute_ms / world if strong else compute_ms
        if allreduce_ms(size, world, bandwidth, alpha) >= compute:
            return str(world)
    return "> 1024"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, default=Path(__file__).parent / "results" / "h100-2026-11-26"
    )
    parser.add_argument("--nvlink-gbps", type=float, default=450.0, help="GB/s per direction")
    parser.add_argument("--ib-gbps", type=float, default=50.0, help="GB/s per direction")
    parser.add_argument("--alpha-nvlink-us", type=float, default=2.0)
    parser.add_argument("--alpha-ib-us", type=float, default=5.0)
    args = parser.parse_args()
    fabrics = {
        "NVLink": (args.nvlink_gbps, args.alpha_nvlink_us),
        "IB": (args.ib_gbps, args.alpha_ib_us),
    }

    print("Gradient size per model (default settings, fp32):")
    sizes = {name: gradient_bytes(name) for name in MODELS}
    for name, size in sizes.items():
        times = step_times_ms(args.results, name)
        measured = ", ".join(f"{k} {v:.2f} ms" for k, v in times.items()) or "not measured"
        print(f"  {name:8s} {size // 4:>9,d} parameters  {size / 2**20:5.2f} MiB  "
              f"H100 step at batch {BATCH}: {measured}")  # fmt: skip

    print("\nRing all-reduce per optimizer step (ms), and communication's share of the step:")
    print("  weak = each GPU keeps batch 128 (global 128 x W): compute per step unchanged;")
    print("  strong = global batch 128 split W ways: compute at best 1/W of one GPU's.")
    header = f"  {'model':8s} {'compute':>9s} {'fabric':6s}" + "".join(
        f"{w:>16d}" for w in WORLD_SIZES
    )
    print(header + "   (GPUs: ms | weak% | strong%)")
    for name, size in sizes.items():
        times = step_times_ms(args.results, name)
        for label, compute in (times or {"-": None}).items():
            for fabric, (bandwidth, alpha) in fabrics.items():
                cells = []
                for world in WORLD_SIZES:
                    comm = allreduce_ms(size, world, bandwidth, alpha)
                    if compute is None:
                        cells.append(f"{comm:16.3f}")
                        continue
                    weak = 100 * comm / (compute + comm)
                    strong = 100 * comm / (compute / world + comm)
                    cells.append(f"{comm:7.3f}|{weak:3.0f}|{strong:3.0f}")
                print(f"  {name:8s} {label:>9s} {fabric:6s}" + "".join(f"{c:>16s}" for c in cells))

    print("\nSmallest world size where communication takes at least half the step:")
    for name, size in sizes.items():
        for label, compute in step_times_ms(args.results, name).items():
            for fabric, (bandwidth, alpha) in fabrics.items():
                found = {
                    mode: first_dominated(size, bandwidth, alpha, compute, mode == "strong")
                    for mode in ("weak", "strong")
                }
                print(f"  {name:8s} {label:9s} {fabric:6s} weak: {found['weak']:>6s}   "
                      f"strong (global batch 128): {found['strong']:>6s}")  # fmt: skip
    print(
        "\nNVLink beyond 8 GPUs needs an NVLink Switch System; an HGX/DGX H100 node has 8 "
        "GPUs on NVLink, so past 8 the InfiniBand rows apply."
    )


if __name__ == "__main__":
    main()
