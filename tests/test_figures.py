"""Every figure in the docs is a figure in a kept file.

A *figure* is a number in README.md or docs/*.md that reports a measurement; the rules
that find them are in docs/development.md#figures-come-from-kept-files. Each figure must
be found, at the precision it is written with, in a *kept file*: a file under
benchmarks/results/<machine>-<date>/ that the folder's provenance.json describes (the
command that printed it, the commit, the machine and the date). A figure names its kept
file with a Markdown link, around the figure itself or anywhere in the same paragraph,
list item, heading or table (a table's caption, the paragraph just above it, counts).

    python -m tests.test_figures          # every figure of the docs, and its source

Markdown is parsed with markdown-it-py, as in tests/test_docs.py: code spans and code
blocks are commands and printed examples, not figures.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it.token import Token

from tests.helpers import REPO
from tests.test_docs import MD, NOT_SHELL

RESULTS = REPO / "benchmarks" / "results"
PROVENANCE = "provenance.json"
NOT_RESULTS = {"README.md", PROVENANCE}  # what a results folder holds besides kept files
PROVENANCE_FIELDS = ("command", "commit", "commit_kind", "machine", "date")
COMMIT_KINDS = {
    "code": "the code at this commit printed the file",
    "added": "the commit that added the file; the code that printed it is this commit's or "
    "its parent's (the run came from the working tree before the commit)",
}
FOLDER = re.compile(r"(?P<machine>[a-z0-9]+)-(?P<date>\d{4}-\d{2}-\d{2})")


def shown(path: Path) -> str:
    """A path as messages give it: from the repository's root when inside it."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def doc_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# --- what a figure is ----------------------------------------------------------------------

NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# A unit that marks a measurement: decibels, time, speed, a speed-up or a share.
UNIT = (
    r"(?:\s?(?:dB|ms|µs|s/step|s|min|minutes?|seconds?|hours?|images/s|steps/s)|[x×]|\s?%)"
    r"(?![\w/])"
)
# Numbers joined to the one that carries the unit share it: "0.43, 0.13 and 0.33 dB",
# "5.3 / 5.2 / 4.0 s", "1.7-2x".
JOIN = r"(?:,\s|\s(?:and|or|to)\s|\s?[-–/]\s?)"
# Not the tail of a name (bf16, H100, gpu-5min) or of a longer number.
NOT_INSIDE = r"(?<![\w.,/^])(?<![A-Za-z]-)"
FIGURE_RUN = re.compile(rf"{NOT_INSIDE}(?:{NUMBER})(?:{JOIN}(?:{NUMBER}))*{UNIT}")
ANY_NUMBER = re.compile(rf"{NOT_INSIDE}(?:{NUMBER})")
# A table cell of numbers only ("1,671", "30.68 / 0.987", "0.010 | 0 | 0", "> 1024 / 684").
NUMERIC_CELL = re.compile(r"[\s\d.,·|/+\-−–>≈~()x×%]*\d[\s\d.,·|/+\-−–>≈~()x×%]*")
# A column header that says its cells are measurements, or that they are settings or counts.
MEASURED_HEADER = re.compile(
    r"dB|PSNR|SSIM|images/s|steps/s|%|\b(?:ms|wall|time|training|measured|vs|rounds|speed)\b",
    re.IGNORECASE,
)
SETTING_HEADER = re.compile(r"^\W*(?:parameters|steps|images|processes|n|sets)\W*$", re.I)
GOAL_HEADER = re.compile(r"^\W*(?:goals?|targets?)\W*$", re.IGNORECASE)  # none measured
# A figure that is not a measurement of this package marks itself with an HTML comment
# right after it (invisible on GitHub): a goal, a setting, a figure from the literature,
# an example of output.
NOT_A_MEASUREMENT = re.compile(r"\s*<!--\s*not measured:?\s*(?P<why>[^>]*?)\s*-->")


@dataclass(frozen=True)
class Source:
    """A kept file, or some lines of it (a link's #L3 or #L3-L9)."""

    path: Path
    lines: tuple[int, int] | None = None

    def __str__(self) -> str:
        name = shown(self.path)
        return name if self.lines is None else f"{name}#L{self.lines[0]}-L{self.lines[1]}"

    def numbers(self) -> list[float]:
        return file_numbers(self.path, self.lines)


@functools.cache
def file_numbers(path: Path, lines: tuple[int, int] | None) -> list[float]:
    """Every number a kept file holds (in those lines), without its sign."""
    text = path.read_text(encoding="utf-8")
    if lines is not None:
        text = "\n".join(text.splitlines()[lines[0] - 1 : lines[1]])
    found = re.findall(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text)
    return [abs(float(n.replace(",", ""))) for n in found]


@dataclass
class Figure:
    page: Path
    line: int
    text: str  # as written: "1,671", "21.37"
    context: str  # the words around it, for messages
    sources: list[Source] = field(default_factory=list)
    cited: str | None = None  # an outside publication it links to
    not_measured: str | None = None  # why it is not a measurement, as the page says

    def where(self) -> str:
        return f"{shown(self.page)}:{self.line}: {self.text} ({self.context})"


def matches(figure: str, number: float) -> bool:
    """Whether `number` is `figure` at the figure's precision: 21.37 is 21.366..., 1,671
    is 1671.3, 13.3 is 13.26."""
    plain = figure.replace(",", "")
    decimals = len(plain.partition(".")[2])
    return f"{number:.{decimals}f}" == plain


def problem(figure: Figure) -> str | None:
    """What is wrong with one figure, or None."""
    if figure.not_measured is not None or figure.cited:
        return None
    if not figure.sources:
        return "no kept file: link one in benchmarks/results/ (or mark why it is not measured)"
    for source in figure.sources:
        if any(matches(figure.text, n) for n in source.numbers()):
            return None
    names = ", ".join(str(s) for s in figure.sources)
    return f"not in {names} at this precision"


# --- reading a page -------------------------------------------------------------------------


def result_source(page: Path, href: str) -> Source | None:
    """The kept file a link points to, if it points to one."""
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|//", href):
        return None
    path_part, _, anchor = href.partition("#")
    path = (page.parent / unquote(path_part)).resolve()
    if RESULTS.resolve() not in path.parents or not path.is_file() or path.name in NOT_RESULTS:
        return None
    lines = re.fullmatch(r"L(\d+)(?:-L(\d+))?", anchor)
    if lines:
        return Source(path, (int(lines[1]), int(lines[2] or lines[1])))
    return Source(path)


@dataclass
class Inline:
    """One inline token as text, with the links it holds and the marks after figures."""

    text: str
    line: int
    links: list[tuple[int, int, str]]  # (start, end, href) in text
    marks: list[tuple[int, str]]  # (offset, why) of each <!-- not measured --> comment


def read_inline(token: Token) -> Inline:
    text, links, marks, opened = "", [], [], []
    for child in token.children or []:
        if child.type == "text":
            text += child.content
        elif child.type in ("softbreak", "hardbreak"):
            text += "\n"
        elif child.type == "code_inline":
            text += "\x00"  # a command or printed example: no figure, and no number joins it
        elif child.type == "link_open":
            opened.append((len(text), str(child.attrs["href"])))
        elif child.type == "link_close" and opened:
            start, href = opened.pop()
            links.append((start, len(text), href))
        elif child.type == "html_inline":
            mark = NOT_A_MEASUREMENT.fullmatch(child.content)
            if mark:
                marks.append((len(text), " ".join(mark["why"].split()) or "not measured"))
    return Inline(text, token.map[0] + 1 if token.map else 0, links, marks)


def figures_in(
    page: Path,
    inline: Inline,
    block_sources: list[Source],
    every_number: bool = False,
    line: int | None = None,
) -> list[Figure]:
    """The figures of one inline text: numbers with a unit (and, in a table cell of
    numbers, every number), each with the sources in its scope."""
    spans: list[tuple[int, int, int]] = []  # a number's start and end, and its unit's end
    if every_number:
        spans = [(*m.span(), m.end()) for m in ANY_NUMBER.finditer(inline.text)]
    else:
        for run in FIGURE_RUN.finditer(inline.text):
            at = run.start()
            spans += [
                (at + m.start(), at + m.end(), run.end()) for m in ANY_NUMBER.finditer(run[0])
            ]
    found = []
    for start, end, unit_end in spans:
        figure = Figure(
            page,
            (line or inline.line) + inline.text[:start].count("\n"),
            inline.text[start:end],
            " ".join(inline.text[max(0, start - 40) : end + 20].replace("\x00", "`").split()),
        )
        links = [href for s, e, href in inline.links if s <= start and end <= e]
        if links:
            href = links[-1]
            own = result_source(page, href)
            if own:
                figure.sources = [own]
            elif re.match(r"https?://", href):
                figure.cited = href
        if not figure.sources and not figure.cited:
            figure.sources = list(block_sources)
        for offset, why in inline.marks:  # right after the unit (a space allowed)
            if 0 <= offset - unit_end <= 1:
                figure.not_measured = why
        found.append(figure)
    return found


def sources_of(page: Path, inline: Inline) -> list[Source]:
    found = (result_source(page, href) for _, _, href in inline.links)
    return list(dict.fromkeys(s for s in found if s is not None))


def page_figures(page: Path) -> list[Figure]:
    """Every figure of a page, each with the kept files in its scope."""
    stream = MD.parse(page.read_text(encoding="utf-8"))
    found: list[Figure] = []
    caption: Inline | None = None  # the last paragraph, while only code follows it
    i = 0
    while i < len(stream):
        token = stream[i]
        if token.type == "table_open":
            end = next(j for j in range(i, len(stream)) if stream[j].type == "table_close")
            found += table_figures(page, stream[i:end], caption)
            caption, i = None, end + 1
            continue
        if token.type == "inline":
            inline = read_inline(token)
            found += figures_in(page, inline, sources_of(page, inline))
            caption = inline if stream[i - 1].type == "paragraph_open" else None
        elif token.type == "fence" and shell_language(token.info):
            found += comment_figures(page, token, sources_of(page, caption) if caption else [])
        elif token.type not in ("fence", "code_block", "paragraph_close", "paragraph_open"):
            caption = None
        i += 1
    return found


def shell_language(info: str) -> bool:
    language = info.split()[0].lower() if info.strip() else ""
    return language not in NOT_SHELL and language != "console"


def comment_figures(page: Path, fence: Token, sources: list[Source]) -> list[Figure]:
    """The figures in a shell block's `# comments`, which are prose: the paragraph above
    the block is their scope."""
    found = []
    for k, code_line in enumerate(fence.content.split("\n")):
        comment = re.search(r"(?:^|\s)#\s(.*)$", code_line)
        if comment:
            line = (fence.map[0] if fence.map else 0) + 2 + k
            found += figures_in(page, Inline(comment[1], line, [], []), sources)
    return found


def table_figures(page: Path, table: list[Token], caption: Inline | None) -> list[Figure]:
    rows: list[tuple[int, list[Inline]]] = []
    for k, token in enumerate(table):
        if token.type == "tr_open":
            line = token.map[0] + 1 if token.map else 0
            rows.append((line, []))
        elif token.type == "inline" and rows:
            rows[-1][1].append(read_inline(table[k]))
    (_, header), body = rows[0], rows[1:]
    sources = [s for _, row in rows for cell in row for s in sources_of(page, cell)]
    sources = list(dict.fromkeys(sources + (sources_of(page, caption) if caption else [])))
    of_figures = bool(sources) or any(MEASURED_HEADER.search(h.text) for h in header)
    found = []
    for line, row in body:
        for column, cell in enumerate(row):
            named = header[column].text if column < len(header) else ""
            every = (
                of_figures
                and column > 0
                and not SETTING_HEADER.match(named)
                and NUMERIC_CELL.fullmatch(cell.text.strip()) is not None
            )
            figures = figures_in(page, cell, sources, every_number=every, line=line)
            if GOAL_HEADER.match(named):
                for figure in figures:
                    figure.not_measured = figure.not_measured or f"a {named.strip()} column"
            found += figures
    for cell in header:
        found += figures_in(page, cell, sources, line=rows[0][0])
    return found


# --- provenance -------------------------------------------------------------------------------


def result_folders() -> list[Path]:
    return sorted(p for p in RESULTS.iterdir() if p.is_dir())


def provenance_problems(folder: Path) -> list[str]:
    """What is missing from a results folder's provenance.json."""
    name = shown(folder)
    path = folder / PROVENANCE
    if not path.is_file():
        return [f"{name}: no {PROVENANCE}"]
    record = json.loads(path.read_text())
    problems = []
    folder_name = FOLDER.fullmatch(folder.name)
    if not folder_name:
        problems.append(f"{name}: a results folder is named <machine>-<YYYY-MM-DD>")
    elif record.get("date") != folder_name["date"]:
        problems.append(f"{name}: date {record.get('date')!r} is not the folder's")
    kept = {p.name for p in folder.iterdir() if p.is_file() and p.name not in NOT_RESULTS}
    files = record.get("files", {})
    problems += [f"{name}/{f}: not in {PROVENANCE}" for f in sorted(kept - set(files))]
    problems += [f"{name}/{f}: in {PROVENANCE}, not kept" for f in sorted(set(files) - kept)]
    for file, entry in files.items():
        facts = {**record, **entry}
        for key in PROVENANCE_FIELDS:
            if not str(facts.get(key) or "").strip():
                problems.append(f"{name}/{file}: no {key}")
        if facts.get("commit_kind") not in (None, *COMMIT_KINDS):
            problems.append(f"{name}/{file}: commit_kind is one of {sorted(COMMIT_KINDS)}")
        commit = str(facts.get("commit", ""))
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            problems.append(f"{name}/{file}: commit {commit!r} is not a full commit hash")
        elif not commit_known(commit):
            problems.append(f"{name}/{file}: commit {commit} is not in this repository")
    return problems


def commit_known(commit: str) -> bool:
    """Whether git knows the commit; True where git cannot tell (no git, a shallow clone)."""
    try:
        shallow = subprocess.run(
            ["git", "rev-parse", "--is-shallow-repository"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if shallow.returncode != 0 or shallow.stdout.strip() != "false":
            return True
        found = subprocess.run(
            ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True
        )
    except OSError:
        return True
    return found.returncode == 0


def rederived_files() -> list[tuple[Path, str]]:
    """Kept files that a pure calculation printed (no timing, no randomness): the test
    runs the command again and compares."""
    found = []
    for folder in result_folders():
        path = folder / PROVENANCE
        if path.is_file():
            for file, entry in json.loads(path.read_text()).get("files", {}).items():
                if entry.get("rederive"):
                    found.append((folder / file, entry["command"]))
    return found


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_figure_is_in_the_kept_file_it_names(page):
    problems = [f"{f.where()}: {why}" for f in page_figures(page) if (why := problem(f))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", result_folders(), ids=lambda p: p.name)
def test_every_kept_file_names_its_command_commit_machine_and_date(folder):
    problems = provenance_problems(folder)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "kept, command", rederived_files(), ids=lambda x: x.name if isinstance(x, Path) else ""
)
def test_a_calculated_file_is_what_its_command_prints_today(kept, command):
    words = shlex.split(command)
    assert words[0] == "python", command
    printed = subprocess.run(
        [sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == kept.read_text(), f"{command} now prints something else"


def planted(tmp_path: Path, text: str) -> list[str]:
    """The problems of a page with `text`, beside a kept file run.txt."""
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir(exist_ok=True)
    page.write_text(text)
    return [f"{f.text}: {why}" for f in page_figures(page) if (why := problem(f))]


@pytest.fixture
def kept_file(tmp_path, monkeypatch):
    """A results folder with one kept file, as the checker's RESULTS."""
    results = tmp_path / "benchmarks" / "results"
    (results / "cpu-2026-12-01").mkdir(parents=True)
    (results / "cpu-2026-12-01" / "run.txt").write_text(
        "model 21.366 dB, SSIM 0.8914\n1671.3 images/s, 1.87x\ntrain 564.8 s\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "RESULTS", results)
    return "../benchmarks/results/cpu-2026-12-01/run.txt"


GOOD = (
    "The model scores [21.37 dB]({link}), 1,671 images/s (1.87x) in 565 s ([kept]({link})).\n"
    "Trained at σ 0.5, batch 128, 2700 steps, on 28x28 images with 8 GiB of RAM and torch\n"
    "2.11 (`gpu-5min`); `denoise-dist train --max-steps 300` ends with `training 2.1 s`.\n\n"
    "What it printed ([run.txt]({link})):\n\n"
    "| model | PSNR (dB) | SSIM | images/s | goal |\n|---|--:|--:|--:|---|\n"
    "| unet (σ 0.5) | 21.4 | 0.891 | 1,671 | 22 dB |\n\n"
    "The goal is 22 dB<!-- not measured: the goal -->.\n"
)


def test_the_checker_passes_sourced_figures_and_numbers_that_are_not_measurements(
    tmp_path, kept_file
):
    """The right figures at their precision (21.37 of 21.366, 1,671 of 1671.3, 565 of
    564.8), a table sourced by its caption, a goal marked as one, a goal column, and
    numbers that are not measurements (σ 0.5, batch 128, 2700 steps, 28x28, 8 GiB,
    torch 2.11, a code span)."""
    assert planted(tmp_path, GOOD.format(link=kept_file)) == []


@pytest.mark.parametrize(
    "old, new",
    [
        ("[21.37 dB]", "[21.73 dB]"),  # a wrong figure in its own link
        ("in 565 s", "in 566 s"),  # a wrong figure in a paragraph with a source
        ("| 21.4 |", "| 21.5 |"),  # a wrong cell in a table sourced by its caption
        ("(1.87x)", "(1.78x)"),  # a wrong speed-up
    ],
)
def test_the_checker_fails_a_wrong_figure(tmp_path, kept_file, old, new):
    page = GOOD.format(link=kept_file)
    assert old in page
    problems = planted(tmp_path, page.replace(old, new))
    wrong = re.search(NUMBER, new)
    assert wrong and len(problems) == 1, problems
    assert problems[0].startswith(f"{wrong[0]}: not in ") and "run.txt" in problems[0]


@pytest.mark.parametrize(
    "extra",
    [
        "On photographs it gains 21.9 dB.\n",  # prose, with no source in its paragraph
        "It ran at 3,100 images/s, a 1.8x speed-up.\n",
        "| model | PSNR (dB) |\n|---|--:|\n| unet | 21.37 |\n",  # a table with no source
        "Evaluating took 7 min, 92% of it BM3D.\n",
        "See [the results](../benchmarks/results/cpu-2026-12-01/) for 21.37 dB.\n",  # a folder
        "```bash\ndenoise-dist train   # 21.9 dB after 9.4 min\n```\n",  # a shell comment
    ],
)
def test_the_checker_fails_a_figure_without_a_source(tmp_path, kept_file, extra):
    page = GOOD.format(link=kept_file) + "\n" + extra
    problems = planted(tmp_path, page)
    assert problems and all("no kept file" in p for p in problems), problems


def test_a_source_narrowed_to_lines_holds_only_those_lines(tmp_path, kept_file):
    assert planted(tmp_path, f"Scored [21.37 dB]({kept_file}#L1).\n") == []
    assert len(planted(tmp_path, f"Scored [21.37 dB]({kept_file}#L2-L3).\n")) == 1
    assert matches("13.3", 13.26) and matches("1,671", 1671.3) and not matches("21.4", 21.46)


def test_the_provenance_check_fails_a_kept_file_that_does_not_say_where_it_came_from(
    tmp_path,
):
    folder = tmp_path / "cpu-2026-12-01"
    folder.mkdir()
    (folder / "run.txt").write_text("21.37 dB\n")
    assert provenance_problems(folder) == [f"{folder}: no provenance.json"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    record: dict = {
        "machine": "a 2-core CPU",
        "date": "2026-12-01",
        "files": {"run.txt": {"commit": head, "commit_kind": "code"}},
    }
    (folder / PROVENANCE).write_text(json.dumps(record))
    assert [p.rsplit(": ", 1)[-1] for p in provenance_problems(folder)] == ["no command"]
    record["date"] = "2026-12-02"
    record["files"]["run.txt"]["command"] = "python benchmarks/x.py"
    (folder / PROVENANCE).write_text(json.dumps(record))
    assert [p.rsplit(": ", 1)[-1] for p in provenance_problems(folder)] == [
        "date '2026-12-02' is not the folder's"
    ]
    record["date"] = "2026-12-01"
    record["files"]["run.txt"]["commit"] = "0" * 40
    (folder / PROVENANCE).write_text(json.dumps(record))
    if commit_known("0" * 40):
        pytest.skip("git cannot tell which commits exist here (a shallow clone)")
    assert provenance_problems(folder)[0].endswith("is not in this repository")


def test_benchmarks_provenance_py_records_what_the_check_asks_for(tmp_path):
    folder = tmp_path / "cpu-2026-12-01"
    folder.mkdir()
    (folder / "run.txt").write_text("21.37 dB\n")
    recorded = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "provenance.py"), str(folder / "run.txt")]
        + ["--command", "python benchmarks/x.py", "--machine", "a 2-core CPU"]
        + ["--commit", "HEAD"],
        capture_output=True,
        text=True,
    )
    assert recorded.returncode == 0, recorded.stderr
    assert provenance_problems(folder) == []
    kept = json.loads((folder / PROVENANCE).read_text())
    assert kept["date"] == "2026-12-01" and kept["files"]["run.txt"]["commit_kind"] == "code"


def main() -> None:
    """Print every figure of the docs with its source, or what is wrong with it."""
    for page in doc_pages():
        for figure in page_figures(page):
            why = problem(figure)
            source = (
                figure.not_measured
                and f"not measured: {figure.not_measured}"
                or figure.cited
                or ", ".join(str(s.path.relative_to(RESULTS)) for s in figure.sources)
            )
            print(f"{'FAIL' if why else 'ok  '} {figure.where()} <- {why or source}")


if __name__ == "__main__":
    main()
