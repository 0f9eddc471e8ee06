"""The documentation: the README stays a short front page, and `docs/` builds with mkdocs in strict mode (no
broken link or anchor, no page left out of the nav), so a moved section cannot leave a dead reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300
# The venv's mkdocs, beside the interpreter running the tests (a dev dependency: its absence is a failure).
MKDOCS = Path(sys.executable).with_name("mkdocs")


def _nav_pages(entries) -> set[str]:
    """Every page path named anywhere in mkdocs.yml's nav (entries are 'page.md', {title: 'page.md'} or sections)."""
    pages: set[str] = set()
    for entry in entries:
        if isinstance(entry, str):
            pages.add(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages |= _nav_pages([value] if isinstance(value, str) else value)
    return pages


def test_mkdocs_builds_strict(tmp_path):
    assert MKDOCS.is_file(), f"{MKDOCS} missing: install the dev extras (mkdocs, mkdocs-material) into the venv"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [str(MKDOCS), "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_mkdocs_fails_on_a_broken_anchor(tmp_path):
    # The strict build must catch a link to a heading that does not exist (mkdocs only logs those by default).
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](other.md#no-such-heading)\n")
    (docs / "other.md").write_text("# Other\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["nav"] = ["index.md", "other.md"]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [str(MKDOCS), "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "no-such-heading" in proc.stdout + proc.stderr


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    nav = _nav_pages(config["nav"])
    assert pages - nav == set(), f"docs pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    assert nav - pages == set(), f"nav entries with no page: {sorted(nav - pages)}"


def test_readme_is_a_short_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference text into docs/"
