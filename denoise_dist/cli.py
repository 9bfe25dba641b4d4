"""`denoise-dist <command>`: the console entry point.

User errors (bad config, missing data, a run folder that holds another run) print one
line and exit non-zero; `--debug` shows the traceback instead (`errors.run_command`).
"""

from __future__ import annotations

import argparse
import sys

from denoise_dist import train
from denoise_dist.commands import denoise, env, evaluate
from denoise_dist.config import config_from_args
from denoise_dist.errors import one_line_warnings, run_command

COMMANDS = {
    "train": "Train a denoiser (under accelerate launch for several processes).",
    "evaluate": "PSNR/SSIM over noise levels, against classical denoisers.",
    "denoise": "Denoise your own image files with a trained model.",
    "env": "Print versions, devices, data and Accelerate config for a bug report.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="denoise-dist", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train.build_parser(commands.add_parser("train", help=COMMANDS["train"]))
    evaluate.add_arguments(commands.add_parser("evaluate", help=COMMANDS["evaluate"]))
    denoise.add_arguments(commands.add_parser("denoise", help=COMMANDS["denoise"]))
    env.add_arguments(commands.add_parser("env", help=COMMANDS["env"]))
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "train":
        train.train(config_from_args(args))
    elif args.command == "evaluate":
        evaluate.evaluate(args)
    elif args.command == "env":
        env.env(args)
    else:
        denoise.denoise(args)


def main(argv: list[str] | None = None) -> int:
    one_line_warnings()
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args), getattr(args, "debug", False))


if __name__ == "__main__":
    sys.exit(main())
