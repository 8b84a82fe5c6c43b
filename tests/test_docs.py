"""The documentation stays usable: a short README, links that lead somewhere, an architecture page that
names files which exist, and a benchmark report that is only what `wharf bench all` writes."""

import re
from pathlib import Path

import faust

from wharf.bench.all import Section, markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
PATH_IN_BACKTICKS = re.compile(r"`((?:[\w.-]+/)+[\w.-]*)`")  # `streams/sinks/writer.py`, `online_models/anomaly/`


def relative_links(doc: Path) -> list[str]:
    text = CODE_BLOCK.sub("", doc.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/ (at most {README_MAX_LINES})"


def test_readme_gives_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make demo\b", readme, re.M) and re.search(r"^make test\b", readme, re.M)


def test_every_relative_link_points_to_an_existing_file():
    broken = []
    for doc in DOCS:
        for target in relative_links(doc):
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, "links to nothing: " + ", ".join(broken)
    assert any(relative_links(ROOT / "README.md")), "the link pattern found no link at all"


def test_architecture_names_only_files_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(PATH_IN_BACKTICKS.findall(text))
    assert len(named) > 20, named  # the page names the files of every hop
    faust_root = Path(faust.__file__).resolve().parent.parent  # Faust's own files are named as in its package
    missing = sorted(p for p in named if not (faust_root if p.startswith("faust/") else ROOT).joinpath(p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_benchmarks_is_only_what_bench_all_writes():
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    header = re.match(r"# Benchmarks\n\nWritten by `wharf bench all` on (.+?)\. Machine: (.+)\.\n", text)
    assert header, "docs/BENCHMARKS.md must start as wharf/bench/all.py `markdown` writes it"
    sections = [Section(title, command, body, float(seconds)) for title, command, seconds, body in re.findall(
        r"^## (.+)\n\nCommand: `(.+)` \((\d+) s\)\n\n```\n(.*?)\n```\n", text, re.S | re.M)]
    assert sections, "no benchmark section found"
    rebuilt = markdown(header.group(1), header.group(2), sections)
    assert rebuilt == text, ("docs/BENCHMARKS.md holds text `wharf bench all` does not write: "
                             "hand-written notes go to docs/benchmark-history.md")
