"""The docs cannot rot. Every Markdown file in the repository is read, and:

- each relative link and image resolves to a file in the repository, and each `#anchor`
  to a heading of the linked page (GitHub's slug rules);
- each command line of a fenced code block, and each inline code span of the prose, that
  runs the package (`denoise-dist ...`, `python -m denoise_dist...`, `accelerate launch
  ... -m denoise_dist.train ...`, `sbatch slurm/<template> <train flags>`) parses with the
  package's real argument parser, and a `train` line's flags pass the config's
  validation, without running anything (an inline span without arguments, such as
  `denoise-dist evaluate`, names a command and is not parsed);
- README.md stays short, starts with the two commands `.ci/run` runs, and links every
  page of docs/.

Markdown is parsed with markdown-it-py (it comes with rich), so code spans, fences and
tables are read as GitHub reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from denoise_dist.cli import build_parser
from denoise_dist.config import config_from_args
from denoise_dist.errors import UserError
from tests.helpers import REPO

README_MAX_LINES = 250
SKIP_DIRS = {"runs", "data", "build", "dist", "node_modules", "wandb"}
NOT_SHELL = {"yaml", "yml", "json", "python", "py", "toml", "text", "txt", "markdown", "md"}
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}
LEADING_WORDS = {"do", "then", "else", "time", "exec", "!", "{"}
VARIABLE_STANDIN = "1"  # what `$VAR` becomes before parsing: a valid path, int and float
ELLIPSIS = ("...", "…")  # "more flags here": dropped before parsing
MD = MarkdownIt("commonmark").enable("table")


def markdown_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
        ]
        found += [Path(folder) / f for f in files if f.endswith(".md")]
    return sorted(found)


MARKDOWN = markdown_files()


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def tokens(path: Path) -> list[Token]:
    return MD.parse(path.read_text(encoding="utf-8"))


# --- links and anchors ---------------------------------------------------------------------


def github_slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (letters, digits, `_`, `-`
    and spaces kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def heading_text(inline: Token) -> str:
    return "".join(
        " " if child.type in ("softbreak", "hardbreak") else child.content
        for child in inline.children or []
        if child.type in ("text", "code_inline", "softbreak", "hardbreak")
    )


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 ... for repeated headings."""
    found: set[str] = set()
    stream = tokens(path)
    for i, token in enumerate(stream):
        if token.type == "heading_open":
            slug = github_slug(heading_text(stream[i + 1]))
            unique, n = slug, 0
            while unique in found:
                n += 1
                unique = f"{slug}-{n}"
            found.add(unique)
    return found


def link_targets(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image, in Markdown or inline HTML."""
    targets = []
    for token in tokens(path):
        line = token.map[0] + 1 if token.map else 0
        if token.type in ("html_block", "inline"):
            html = [token] if token.type == "html_block" else token.children or []
            for part in html:
                if part.type in ("html_block", "html_inline"):
                    found = re.findall(r'(?:src|href)\s*=\s*"([^"]+)"', part.content)
                    targets += [(line, t) for t in found]
        for child in token.children or []:
            if child.type == "link_open":
                targets.append((line, str(child.attrs["href"])))
            elif child.type == "image":
                targets.append((line, str(child.attrs["src"])))
    return targets


def link_problem(page: Path, target: str) -> str | None:
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|//", target):
        return None  # a URL: not checked offline
    path_part, _, anchor = target.partition("#")
    anchor = unquote(anchor)  # markdown-it percent-encodes, GitHub matches decoded
    dest = (page.parent / unquote(path_part)).resolve() if path_part else page
    if REPO.resolve() not in (dest, *dest.parents):
        return f"{target}: points outside the repository"
    if not dest.exists():
        return f"{target}: {relative(dest)} does not exist"
    if not anchor or (dest.suffix != ".md" and re.fullmatch(r"L\d+(-L\d+)?", anchor)):
        return None
    if dest.suffix != ".md":
        return f"{target}: an anchor into a file that is not Markdown"
    if anchor not in anchors(dest):
        return f"{target}: no heading of {relative(dest)} has the anchor #{anchor}"
    return None


@pytest.mark.parametrize("page", MARKDOWN, ids=relative)
def test_links_and_anchors_resolve(page):
    problems = [
        f"{relative(page)}:{line}: {problem}"
        for line, target in link_targets(page)
        if (problem := link_problem(page, target))
    ]
    assert not problems, "\n".join(problems)


# --- commands in fenced blocks -----------------------------------------------------------


def shell_commands(code: str, console: bool = False) -> list[tuple[int, list[str]]]:
    """(line offset, words) of each simple command in a block of shell: continuation lines
    joined, comments and `$ ` prompts dropped, split at ; && || | &, and leading
    `VAR=value` assignments and keywords (do, then, time ...) removed. In a console
    block only the lines after a `$ ` prompt are commands; the rest is their output."""
    commands = []
    lines = code.split("\n")
    i = 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i]
        i += 1
        if console and not line.startswith("$ "):
            continue
        line = line.strip().removeprefix("$ ")
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:  # unbalanced quotes: not a command line
            continue
        current: list[str] = []
        for word in [*words, ";"]:
            if word in OPERATORS:
                while current and (current[0] in LEADING_WORDS or re.match(r"\w+=", current[0])):
                    current.pop(0)
                if current:
                    commands.append((start, current))
                current = []
            else:
                current.append(word)
    return commands


def named_yaml_blocks(page_tokens: list[Token], tmp_path: Path) -> dict[str, Path]:
    """YAML blocks whose first line is `# NAME.yaml`, written out, so that `--config
    NAME.yaml` on the same page reads (and validates) the file the page shows."""
    files = {}
    for token in page_tokens:
        first = token.content.split("\n", 1)[0].strip()
        name = first.removeprefix("#").strip()
        if token.type == "fence" and first.startswith("#") and name.endswith((".yaml", ".yml")):
            files[name] = tmp_path / name
            files[name].write_text(token.content)
    return files


def parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace | str:
    """The parsed arguments, or argparse's error message; `--help` parses as valid."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            return parser.parse_args(words)
    except SystemExit as e:
        return "help" if e.code == 0 else err.getvalue().strip().splitlines()[-1]


def check_denoise_dist(words: list[str], yaml_files: dict[str, Path]) -> str | None:
    """Parse `denoise-dist WORDS`; a train command's config is validated too."""
    words = [VARIABLE_STANDIN if "$" in w else w for w in words if w not in ELLIPSIS]
    args = parse(build_parser(), words)
    if isinstance(args, str):
        return None if args == "help" else args
    if args.command != "train":
        return None
    if getattr(args, "config", None):
        shown = yaml_files.get(args.config)
        in_repo = REPO / args.config
        if shown is None and not in_repo.is_file():
            return f"--config {args.config}: no such file in the repository or on this page"
        args.config = str(shown or in_repo)
    try:
        config_from_args(args)
    except UserError as e:
        return f"config: {e}"
    return None


def check_command(words: list[str], yaml_files: dict[str, Path]) -> str | None:
    """The problem with one command line that runs the package, or None (also for a
    command that does not run it)."""
    if words[0] == "denoise-dist":
        return check_denoise_dist(words[1:], yaml_files)
    if words[0] in ("python", "python3") and words[1:2] == ["-m"] and len(words) > 2:
        if words[2] == "denoise_dist":
            return check_denoise_dist(words[3:], yaml_files)
        if words[2] == "denoise_dist.train":
            return check_denoise_dist(["train", *words[3:]], yaml_files)
    if words[:2] == ["accelerate", "launch"]:
        if "--config_file" in words:
            config = words[words.index("--config_file") + 1]
            if "$" not in config and not (REPO / config).is_file():
                return f"--config_file {config} does not exist"
        if "-m" in words:
            module, rest = words[words.index("-m") + 1], words[words.index("-m") + 2 :]
            if module == "denoise_dist.train":
                return check_denoise_dist(["train", *rest], yaml_files)
            if module == "denoise_dist":
                return check_denoise_dist(rest, yaml_files)
            return f"-m {module}: not a module of the package"
        script = next((w for w in words if w.endswith(".py")), None)
        if script and not (REPO / script).is_file():
            return f"{script} does not exist"
    if words[0] == "sbatch":
        script = next((w for w in words if w.endswith(".sbatch")), None)
        if script is None:
            return None
        if not (REPO / script).is_file():
            return f"{script} does not exist"
        return check_denoise_dist(["train", *words[words.index(script) + 1 :]], yaml_files)
    return None


def commands_of(page: Path) -> list[tuple[int, list[str]]]:
    found = []
    for token in tokens(page):
        language = token.info.split()[0].lower() if token.info.strip() else ""
        if token.type == "fence" and language not in NOT_SHELL and token.map:
            lines = shell_commands(token.content, console=language == "console")
            found += [(token.map[0] + 2 + i, words) for i, words in lines]
    return found


RUNS_THE_PACKAGE = re.compile(r"(denoise-dist|python3? -m denoise_dist|accelerate launch|sbatch)\b")


def is_a_name(words: list[str]) -> bool:
    """`denoise-dist evaluate`, `python -m denoise_dist`, `accelerate launch`: a command
    named in prose, with no arguments to check."""
    words = [w for w in words if w not in ELLIPSIS]
    return len(words) <= (4 if words[0].startswith("python") else 2)


def inline_commands_of(page: Path) -> list[tuple[int, list[str]]]:
    """(line, words) of each inline code span of the prose that runs the package."""
    found = []
    for token in tokens(page):
        line = token.map[0] + 1 if token.map else 0
        for child in token.children or [] if token.type == "inline" else []:
            if child.type in ("softbreak", "hardbreak"):
                line += 1
            elif child.type == "code_inline" and RUNS_THE_PACKAGE.match(child.content):
                found += [
                    (line, words)
                    for _, words in shell_commands(child.content)
                    if not is_a_name(words)
                ]
    return found


@pytest.mark.parametrize("page", MARKDOWN, ids=relative)
def test_commands_in_prose_parse(page, tmp_path):
    yaml_files = named_yaml_blocks(tokens(page), tmp_path)
    problems = [
        f"{relative(page)}:{line}: `{shlex.join(words)}`\n    {problem}"
        for line, words in inline_commands_of(page)
        if (problem := check_command(words, yaml_files))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", MARKDOWN, ids=relative)
def test_commands_in_fenced_blocks_parse(page, tmp_path):
    yaml_files = named_yaml_blocks(tokens(page), tmp_path)
    problems = [
        f"{relative(page)}:{line}: {shlex.join(words)}\n    {problem}"
        for line, words in commands_of(page)
        if (problem := check_command(words, yaml_files))
    ]
    assert not problems, "\n".join(problems)


# --- the README ----------------------------------------------------------------------------


def test_readme_is_short_starts_with_the_ci_commands_and_links_every_page():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= README_MAX_LINES
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_commands = [ci[i + 1].strip() for i, line in enumerate(ci) if "# README command" in line]
    fences = [t.content.strip() for t in tokens(readme) if t.type == "fence"]
    assert len(ci_commands) == 2 and fences[:2] == ci_commands, (fences[:2], ci_commands)

    linked: set[Path] = set()
    for _, target in link_targets(readme):
        if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) and target.split("#")[0]:
            linked.add((REPO / target.split("#")[0]).resolve())
    pages = {p.resolve() for p in (REPO / "docs").glob("*.md")}
    assert not pages - linked, f"pages README.md does not link: {sorted(pages - linked)}"


def test_the_checker_sees_the_defects_it_is_for(tmp_path):
    """A broken link, a bad anchor, an unknown flag, a bad value and a bad launch."""
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n## Some `code` here\n")
    assert anchors(page) == {"a-title", "some-code-here"}
    readme = REPO / "README.md"
    assert link_problem(readme, "docs/no-such-page.md")
    assert link_problem(readme, "README.md#no-such-heading")
    assert link_problem(readme, "../outside.md")
    assert link_problem(readme, "https://example.org/x#y") is None
    bad = [
        "denoise-dist train --no-such-flag 1",
        "denoise-dist train --sigma high",
        "denoise-dist train --model resnet",
        "denoise-dist train --lr -1",
        "denoise-dist train --config missing.yaml",
        "denoise-dist evaluate",
        "accelerate launch --config_file accelerate_configs/none.yaml -m denoise_dist.train",
        "accelerate launch --num_processes 2 -m denoise_dist.train --widht 8",
        "sbatch slurm/train_cpu.sbatch --max-steps zero",
    ]
    good = [
        "denoise-dist train --recipe cpu-4min --data-dir $DENOISE_DIST_DATA # a comment",
        "accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m denoise_dist.train"
        " --output-dir runs/x",
        "denoise-dist train --help",
    ]
    for line in bad:
        (_, words), *_ = shell_commands(line)
        assert check_command(words, {}), line
    for line in good:
        (_, words), *_ = shell_commands(line)
        assert check_command(words, {}) is None, line
    shown = tmp_path / "shown.md"  # a page's YAML block is the file its --config names
    shown.write_text(
        "```yaml\n# run.yaml\nsigma_max: lots\n```\n\n"
        "```bash\ndenoise-dist train --config run.yaml\n```\n"
    )
    ((_, words),) = commands_of(shown)
    assert "sigma_max" in str(check_command(words, named_yaml_blocks(tokens(shown), tmp_path)))
    console = "$ denoise-dist train --bogus 1\ndenoise-dist: error: unrecognized arguments"
    assert [w for _, w in shell_commands(console, console=True)] == [
        ["denoise-dist", "train", "--bogus", "1"]
    ]
    prose = tmp_path / "prose.md"  # inline spans: a command is checked, a name is not
    prose.write_text(
        "Run `denoise-dist evaluate --max-images 500`, then\n`denoise-dist train --widht 8`"
        " (see `denoise-dist evaluate`, `accelerate launch` and `python -m denoise_dist`).\n"
    )
    found = inline_commands_of(prose)
    assert [(line, words[1]) for line, words in found] == [(1, "evaluate"), (2, "train")]
    assert all(check_command(words, {}) for _, words in found)
    continued = "for r in 0 1; do\n  X=1 denoise-dist train \\\n    --width 8 &\ndone; wait"
    assert [w for _, w in shell_commands(continued)][1] == ["denoise-dist", "train", "--width", "8"]
