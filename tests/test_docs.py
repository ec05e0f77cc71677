"""The docs site builds (`mkdocs build --strict`), the README stays a front door, and the docs cannot drift
from what the commands print: study pages show their plots, the README's demo table is results/demo.md's
(what `make demo` printed, written by scripts/docs_tables.py) and the command reference is the CLI's own."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
STUDIES = ["demo", "s0", "s1", "s2", "s3", "s4", "batchnorm", "cnn-fusion", "rank", "strategies"]


def docs_tables():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "scripts" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str) -> list[str]:
    """The rows of the first markdown table in TEXT, header and separator included."""
    rows, started = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append(line.strip())
            started = True
        elif started:
            break
    return rows


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs and mkdocstrings are not installed (pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for study in STUDIES:
        assert (tmp_path / "site" / "studies" / study / "index.html").is_file(), study


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the rest belongs in docs/"


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_page_shows_a_plot_that_exists(study):
    page = DOCS / "studies" / f"{study}.md"
    assert page.is_file(), page
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", page.read_text())
    assert images, f"{page} shows no PNG plot"
    for image in images:
        assert (page.parent / image).resolve().is_file(), (page, image)


def test_readme_demo_table_is_what_make_demo_printed():
    printed = table_rows((ROOT / "results" / "demo.md").read_text())
    assert printed, "results/demo.md holds no table: python scripts/docs_tables.py demo"
    readme = (ROOT / "README.md").read_text()
    start = readme.index(printed[0]) if printed[0] in readme else -1
    assert start >= 0, "README.md lacks the demo table's header row of results/demo.md"
    assert table_rows(readme[start:]) == printed, "README's demo table differs from results/demo.md"


def test_command_reference_is_generated_from_the_cli():
    if not (Path(sys.executable).parent / "typer").exists():
        pytest.skip("typer's command line is not installed next to this Python")
    committed = (DOCS / "commands" / "reference.md").read_text()
    assert committed == docs_tables().cli_reference(), \
        "docs/commands/reference.md is not the CLI's: run python scripts/docs_tables.py cli"
