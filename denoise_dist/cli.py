"""`denoise-dist <command>`: the console entry point.

User errors (bad config, missing data, a run folder that holds another run) print one
line and exit non-zero; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from denoise_dist.config import add_config_flags, config_from_args
from denoise_dist.errors import UserError


def _one_line_warnings() -> None:
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="denoise-dist", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="Train a denoiser (under accelerate launch "
                                              "for several processes).")
    add_config_flags(train)
    from denoise_dist import denoise, evaluate

    evaluate.add_arguments(commands.add_parser(
        "evaluate", help="Test-set PSNR/SSIM over noise levels, against classical denoisers."))
    denoise.add_arguments(commands.add_parser(
        "denoise", help="Denoise your own image files with a trained model."))
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from denoise_dist.train import train

        train(config_from_args(args))
        return 0
    if args.command == "evaluate":
        from denoise_dist.evaluate import evaluate

        evaluate(args)
        return 0
    if args.command == "denoise":
        from denoise_dist.denoise import denoise

        denoise(args)
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    _one_line_warnings()
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("denoise-dist: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a permission problem: the user can act on it
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"denoise-dist: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:
        code = getattr(e, "exit_code", None)
        if debug:
            raise
        if isinstance(e, UserError) or code is not None:
            print(f"denoise-dist: {'error: ' if isinstance(e, UserError) else ''}{e}",
                  file=sys.stderr)
            return code or 1
        print(f"denoise-dist: internal error: {type(e).__name__}: {e} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
