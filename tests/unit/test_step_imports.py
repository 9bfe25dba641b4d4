"""Start-up cost: importing the command line loads torch and the standard library, and
none of the optional or heavy libraries a run may never use (each is imported where it
is used). Measured on a 2-core CPU: `import denoise_dist.train` is ~96% torch's import."""

import subprocess
import sys

LAZY = (
    "matplotlib", "wandb", "tensorboard", "skimage", "scipy", "pywt", "accelerate", "rich",
    "safetensors", "PIL", "yaml", "torch._dynamo",
)  # fmt: skip


def imported_by(statement: str) -> set[str]:
    """Every module `statement` imports, from -X importtime, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_the_command_line_imports_no_optional_or_heavy_library():
    modules = imported_by("import denoise_dist.cli, denoise_dist.train")
    assert "torch" in modules and "denoise_dist.step" in modules  # the parse works
    assert sorted(m for m in modules if m.split(".")[0] in LAZY or m in LAZY) == []
