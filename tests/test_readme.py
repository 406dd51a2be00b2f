"""README.md and docs/*.md: links and anchors resolve, quoted commands exist, the headline
figures stand in the pages they link to, and the README's runnable command tour runs.

The tour is read from README.md itself: the fenced block after ``<!-- tour: runnable -->``,
one ``fetalkit`` command per line, each with a comment naming the files it writes
(``<stem>`` stands for any image stem). It runs in a temporary folder after
``fetalkit demo --out demo_out``, as after ``make demo``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
TOUR_MARK = "<!-- tour: runnable -->"
OUTPUT_FLAGS = ("--out", "-o", "--output", "--log")
OUTPUT_NAME = re.compile(r"[\w<>./-]+\.(?:csv|jsonl|json|png|avi|mp4|dcm)\b")


# ---------------------------------------------------------------- markdown helpers

def _lines_outside_fences(text: str) -> list[str]:
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than
    '-' and '_' dropped, each space turned into '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _lines_outside_fences(path.read_text()):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(path: Path) -> list[str]:
    text = "\n".join(_lines_outside_fences(path.read_text()))
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)", text)


def section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def table_rows(text: str) -> list[list[list[str]]]:
    """Every table (a '|' line followed by a delimiter row, as GFM reads it) as a list of
    rows, each a list of cells (escaped pipes kept in cells)."""
    tables, group = [], []
    for line in _lines_outside_fences(text) + [""]:
        if line.startswith("|"):
            group.append(line.strip())
            continue
        if len(group) >= 2 and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", group[1]):
            tables.append([[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in group])
        group = []
    return tables


# ---------------------------------------------------------------- links and anchors

def test_github_slug_rules():
    assert github_slug("Clinical files: sector, burned-in text, DICOM, de-identification, duplicates") == \
        "clinical-files-sector-burned-in-text-dicom-de-identification-duplicates"
    assert github_slug("Privacy masking of video (in progress)") == "privacy-masking-of-video-in-progress"
    assert github_slug("The `fetalkit mask` command") == "the-fetalkit-mask-command"
    assert github_slug("Results on PSFHS (held-out blocks)") == "results-on-psfhs-held-out-blocks"
    assert github_slug("fetal_head and AP[.5:.95]") == "fetal_head-and-ap595"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_links_every_doc_and_every_doc_links_back():
    readme_targets = {t.partition("#")[0] for t in links(README)}
    for doc in DOCS:
        assert f"docs/{doc.name}" in readme_targets, f"README.md does not link docs/{doc.name}"
        assert "../README.md" in {t.partition("#")[0] for t in links(doc)}, f"{doc.name} has no link back"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tables_are_well_formed(page):
    for table in table_rows(page.read_text()):
        header, rule, *rows = table
        assert all(re.fullmatch(r":?-{3,}:?", c) for c in rule), f"{page.name}: bad rule under {header}"
        assert len(rule) == len(header), f"{page.name}: {header}"
        for row in rows:
            assert len(row) == len(header), f"{page.name}: {len(row)} cells, {len(header)} expected: {row}"


# ---------------------------------------------------------------- the README itself

def test_readme_opens_with_the_two_make_commands():
    lines = README.read_text().splitlines()
    assert lines[0] == "# fetalkit"
    first_fence = lines.index("```")
    assert lines[1:first_fence] == [""], "the make block must come first, right after the title"
    block = lines[first_fence + 1:lines.index("```", first_fence + 1)]
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no {target} target"
    said = re.search(r"\[([\w,]+)\] extras", block[1])
    installed = re.findall(r"install -e '\.\[([\w,]+)\]'", makefile)
    assert said and installed, "the make test line should name the extras the Makefile installs"
    assert said.group(1) in installed, f"README says [{said.group(1)}], the Makefile installs {installed}"


def test_readme_is_a_newcomers_page():
    n = len(README.read_text().splitlines())
    assert n < 230, f"README.md has {n} lines; the experiment logs belong in docs/"


# ---------------------------------------------------------------- commands quoted in the pages

def _cli_root():
    import typer.main
    from fetalkit.cli import app
    return typer.main.get_command(app)


def quoted_commands(page: Path) -> list[str]:
    """``fetalkit ...`` commands in inline code and in fenced blocks (continuation lines of a
    usage block, starting with '[' or '--', are joined to their command)."""
    text = page.read_text()
    commands = re.findall(r"`(fetalkit [^`]+)`", text)
    fenced = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        if stripped.startswith("fetalkit "):
            commands.append(stripped)
        elif stripped.startswith(("[", "--")) and commands and line[:1].isspace():
            commands[-1] += " " + stripped
    return [re.split(r"\s#\s?", c)[0] for c in commands]


def _resolve(root, tokens: list[str]):
    cmd, i = root, 1
    while hasattr(cmd, "commands") and i < len(tokens) and tokens[i] in cmd.commands:
        cmd, i = cmd.commands[tokens[i]], i + 1
    return cmd, tokens[i:]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_commands_use_options_that_exist(page):
    root = _cli_root()
    wrong = []
    for command in quoted_commands(page):
        cmd, rest = _resolve(root, command.split())
        used = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", " ".join(rest))) - {"--help"}
        if hasattr(cmd, "commands"):  # a group named alone, e.g. `fetalkit train`
            if used or (rest and not rest[0].startswith("-")):
                wrong.append(f"{command}: no such sub-command")
            continue
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        if used - known:
            wrong.append(f"{command}: {sorted(used - known)}")
    assert not wrong, f"{page.name}: " + "; ".join(wrong)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_scripts_exist(page):
    scripts = set(re.findall(r"python ((?:benchmarks|docs)/[\w/]+\.py)", page.read_text()))
    missing = sorted(s for s in scripts if not (ROOT / s).is_file())
    assert not missing, f"{page.name} runs scripts that do not exist: {missing}"


def test_every_command_has_a_place_in_the_readme():
    """Every top-level command is in the README (a marked spot ``<!-- NAME: ... -->`` counts),
    and every sub-command is quoted in the README or a doc."""
    readme = README.read_text()
    everything = "\n".join(p.read_text() for p in PAGES)
    placeholders = set(re.findall(r"<!--\s*([\w-]+):", readme))
    missing = []

    def walk(cmd, path):
        for name, sub in cmd.commands.items():
            here = [*path, name]
            if hasattr(sub, "commands"):
                walk(sub, here)
            elif len(here) > 1 and here[0] not in placeholders and f"fetalkit {' '.join(here)}" not in everything:
                missing.append(" ".join(here))

    root = _cli_root()
    missing += [n for n in root.commands if f"fetalkit {n}" not in readme]
    walk(root, [])
    assert not missing, f"commands not shown in README.md / docs: {missing}"


# ---------------------------------------------------------------- headline figures

def _numbers(text: str) -> list[str]:
    return re.findall(r"(?<![\d.,])\.?\d+(?:[.,]\d+)*", text)


def _stands_in(number: str, text: str) -> bool:
    before = r"(?<!\d)" if number.startswith(".") else r"(?<![\d.,])"
    return re.search(rf"{before}{re.escape(number)}(?!\d|[.,]\d)", text) is not None


def test_headline_figures_stand_with_their_commands_in_the_linked_doc():
    tables = [t for t in table_rows(section(README.read_text(), "Headline figures"))
              if "command" in t[0] and "doc" in t[0]]
    assert len(tables) >= 1
    checked = 0
    for table in tables:
        header, _, *rows = table
        col = {name: header.index(name) for name in ("figure", "command", "doc")}
        data_col = next(i for i, h in enumerate(header) if h in ("data", "measured on"))
        for row in rows:
            commands = re.findall(r"`([^`]+)`", row[col["command"]])
            assert commands, f"a headline figure without its command: {row}"
            doc_links = re.findall(r"\]\((docs/[\w.-]+\.md)", row[col["doc"]])
            assert doc_links, f"a headline figure without its doc: {row}"
            doc_text = re.sub(r"\s+", " ", (ROOT / doc_links[0]).read_text())
            for command in commands:
                assert re.sub(r"\s+", " ", command) in doc_text, \
                    f"{command!r} is not in {doc_links[0]}"
            for number in _numbers(row[col["figure"]] + " " + row[data_col]):
                assert _stands_in(number, doc_text), \
                    f"figure {number} of row {row[0]!r} is not in {doc_links[0]}"
            checked += 1
    assert checked >= 5


# ---------------------------------------------------------------- the runnable tour

def tour_commands() -> list[str]:
    text = README.read_text()
    assert text.count(TOUR_MARK) == 1, f"README.md needs exactly one {TOUR_MARK}"
    after = text.split(TOUR_MARK, 1)[1].lstrip("\n")
    assert after.startswith("```"), f"a fenced block must follow {TOUR_MARK}"
    block = after.split("\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


TOUR = tour_commands()


def _fetalkit() -> list[str]:
    script = Path(sys.executable).with_name("fetalkit")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'fetalkit'; from fetalkit.cli import main; main()"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([*_fetalkit(), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def after_make_demo(tmp_path_factory) -> Path:
    """A folder as after `make demo`: the phantom images and clip in demo_out/."""
    cwd = tmp_path_factory.mktemp("tour")
    done = _run(["demo", "--out", "demo_out"], cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (cwd / "demo_out/phantoms/pixel_size.csv").is_file()
    assert (cwd / "demo_out/masking/phantom_clip.avi").is_file()
    return cwd


def test_tour_is_a_block_of_fetalkit_commands():
    assert len(TOUR) >= 6
    for line in TOUR:
        assert shlex.split(line, comments=True)[0] == "fetalkit", line
        assert "#" in line, f"name what it writes in a comment: {line}"


def _outputs(tokens: list[str], comment: str, cwd: Path) -> tuple[list[Path], list[str]]:
    flagged = [cwd / tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in OUTPUT_FLAGS]
    base = flagged[0] if flagged else cwd
    base = base if base.is_dir() else base.parent
    return flagged, [str(base / n.replace("<stem>", "*")) for n in OUTPUT_NAME.findall(comment)]


@pytest.mark.parametrize("line", TOUR, ids=[" ".join(shlex.split(t, comments=True)[1:3]) for t in TOUR])
def test_tour_command_runs_and_writes_what_it_names(line, after_make_demo):
    cwd = after_make_demo
    tokens = shlex.split(line, comments=True)
    comment = line.split("#", 1)[1] if "#" in line else ""
    done = _run(tokens[1:], cwd)
    assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    flagged, named = _outputs(tokens, comment, cwd)
    for path in flagged:
        assert path.exists(), f"{line}: wrote no {path.relative_to(cwd)}"
        if path.is_dir():
            assert any(path.iterdir()), f"{line}: {path.relative_to(cwd)} is empty"
        else:
            assert path.stat().st_size > 0, f"{line}: {path.relative_to(cwd)} is empty"
    for pattern in named:
        found = list(Path(pattern).parent.glob(Path(pattern).name))
        assert found and all(f.stat().st_size > 0 for f in found), \
            f"{line}: names {Path(pattern).relative_to(cwd)} but wrote none"
    if not flagged and not named:
        assert done.stdout.strip(), f"{line}: no output at all"
