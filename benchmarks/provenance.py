"""Record where a kept result file came from, in its folder's provenance.json.

    python benchmarks/provenance.py benchmarks/results/cpu-2026-12-05/quality.txt \
        --command "python benchmarks/quality.py --recipe cpu-10min" --machine "..."

The folder is named <machine>-<YYYY-MM-DD>, the day the figures were measured; its
provenance.json holds the machine and date once, and per file the command, the commit
and what that commit is: "code" (the code at that commit printed the file) or "added"
(the commit that added the file; the run came from the tree just before it). By default
the commit is HEAD, of kind "code", and the script refuses while tracked files outside
benchmarks/results/ have uncommitted changes, as HEAD is then not the code that ran.
`--rederive` marks a pure calculation (no timing, no randomness), which the docs test
runs again. Rules and checks: docs/development.md#figures-come-from-kept-files.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

PROVENANCE = "provenance.json"
REPO = Path(__file__).resolve().parents[1]
COMMIT_KINDS = ("code", "added")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def head_commit(repo: Path) -> str:
    changed = [
        line[3:]
        for line in git("status", "--porcelain", "--untracked-files=no", cwd=repo).splitlines()
        if not line[3:].startswith("benchmarks/results/")
    ]
    if changed:
        raise SystemExit(
            f"uncommitted changes ({', '.join(changed[:3])}): HEAD is not the code that ran; "
            "commit first, or pass --commit and --commit-kind"
        )
    return git("rev-parse", "HEAD", cwd=repo)


def record(
    path: Path,
    command: str,
    machine: str | None = None,
    commit: str | None = None,
    commit_kind: str = "code",
    rederive: bool = False,
) -> dict:
    """Add (or replace) `path`'s entry in its folder's provenance.json; return the record."""
    folder = path.resolve().parent
    name = re.fullmatch(r"[a-z0-9]+-(\d{4}-\d{2}-\d{2})", folder.name)
    if not name:
        raise SystemExit(f"{folder.name}: a results folder is named <machine>-<YYYY-MM-DD>")
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    if commit_kind not in COMMIT_KINDS:
        raise SystemExit(f"--commit-kind is one of {', '.join(COMMIT_KINDS)}")
    commit = git("rev-parse", "--verify", f"{commit}^{{commit}}", cwd=REPO) if commit else None
    commit = commit or head_commit(REPO)
    file = folder / PROVENANCE
    kept = json.loads(file.read_text()) if file.is_file() else {"date": name[1], "files": {}}
    if machine:
        kept["machine"] = machine
    if not kept.get("machine"):
        raise SystemExit(f"{folder.name} has no machine yet: pass --machine")
    entry: dict[str, object] = {"command": command, "commit": commit, "commit_kind": commit_kind}
    if rederive:
        entry["rederive"] = True
    kept["files"][path.name] = entry
    file.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="kept files of one results folder")
    parser.add_argument("--command", required=True, help="the command that printed them")
    parser.add_argument("--machine", help="the machine, in words (once per folder)")
    parser.add_argument("--commit", help="default: HEAD, with a clean tree")
    parser.add_argument("--commit-kind", default="code", choices=COMMIT_KINDS)
    parser.add_argument("--rederive", action="store_true", help="a pure calculation")
    args = parser.parse_args(argv)
    for path in args.files:
        record(path, args.command, args.machine, args.commit, args.commit_kind, args.rederive)
        print(f"recorded {path} in {path.parent / PROVENANCE}")


if __name__ == "__main__":
    main(sys.argv[1:])
