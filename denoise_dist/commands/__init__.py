"""The `denoise-dist` subcommands other than train: argument parsing and orchestration."""

import argparse


def add_model_argument(parser: argparse.ArgumentParser, metavar: str = "MODEL") -> None:
    """The trained model a command reads, its first positional argument."""
    parser.add_argument(
        "model",
        metavar=metavar,
        help="A run folder (its best_model.safetensors) or a .safetensors file.",
    )
