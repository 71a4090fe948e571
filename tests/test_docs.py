"""The README is a front door to the docs, and what the code cites in them exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ["imgflow", "agents", "tables", "models", "lifecycle", "sources", "simulator", "dashboard"]
CODE += ["web", "cli", "devstack", "benchmarks", "scripts", "tests", "deploy"]


def cited_files() -> list[Path]:
    suffixes = (".py", ".yaml", ".yml", ".toml")
    files = [p for top in CODE for p in (ROOT / top).rglob("*") if p.suffix in suffixes]
    files += [ROOT / name for name in ("docker-compose.yml", "Makefile", "pyproject.toml", ".env.example")]
    return [p for p in files if p != Path(__file__).resolve()]


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)(?:#[\w-]+)?\)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), "docs pages the README does not link"


def test_every_design_section_the_code_cites_exists() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", design, flags=re.M))
    cited: dict[str, set[str]] = {}
    for path in cited_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        assert "DESIGN section" not in text, f"{path}: cites a design document the repository lacks"
        for number in re.findall(r"docs/design\.md\s*(?:#:\s*)?§(\d+)", text):
            cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    assert cited, "no code cites docs/design.md"
    missing = {n: sorted(where) for n, where in cited.items() if n not in sections}
    assert missing == {}, f"sections cited but not in docs/design.md: {missing}"


def test_every_docs_page_the_code_names_exists() -> None:
    named = set()
    for path in cited_files():
        named |= set(re.findall(r"docs/([\w-]+\.md)", path.read_text(encoding="utf-8", errors="replace")))
    assert named, "no code names a docs page"
    assert {n for n in named if not (ROOT / "docs" / n).exists()} == set()
