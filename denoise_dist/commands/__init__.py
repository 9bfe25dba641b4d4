"""The `denoise-dist` subcommands other than train: argument parsing and orchestration."""
