"""The documentation: a short README, relative links that resolve, every page of docs/ in the
site's nav, the README's examples and their copies in the docs alike, CITATION.cff in step with
pyproject.toml. Reads files only (no mkdocs, no network)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).*?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.I)


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file, code blocks and code spans left out."""
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not EXTERNAL.match(t)]


def test_readme_is_a_short_user_guide():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move long sections to docs/"
    # CI runs this line; the docs build is named where users read it
    assert "    pip install -e '.[test]' && pytest" in lines
    assert any("pip install -e '.[docs]' && mkdocs build --strict" in line for line in lines)
    # docs/index.md includes the guide between these markers (pymdownx.snippets)
    text = "\n".join(lines)
    assert text.count("--8<-- [start:guide]") == 1 and text.count("--8<-- [end:guide]") == 1
    assert '--8<-- "README.md:guide"' in (DOCS / "index.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path):
    broken = [t for t in relative_links(path)
              if not (path.parent / t.split("#", 1)[0]).resolve().exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


def nav_pages(config_text: str) -> list[str]:
    """Every page file named in mkdocs.yml's nav."""
    try:
        import yaml
    except ImportError:  # the nav's leaves are `- Title: page.md` or `- page.md` lines
        nav = config_text.split("\nnav:", 1)[1]
        return re.findall(r"^\s+-\s+(?:[^\n]*?:\s+)?([\w./-]+\.md)\s*$", nav, re.M)

    def leaves(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from leaves(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from leaves(value)

    return list(leaves(yaml.safe_load(config_text)["nav"]))


def test_every_docs_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^docs_dir:\s*docs\s*$", config, re.M)
    nav = nav_pages(config)
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    assert not [p for p in nav if not (DOCS / p).is_file()], "the nav names a missing page"
    on_disk = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert sorted(on_disk - set(nav)) == [], "pages missing from mkdocs.yml's nav"


@pytest.mark.parametrize("name", ["zero_shot", "custom_strategy"])
def test_docs_copies_of_the_readme_examples_match_it(name):
    block = re.compile(rf"```python\n(# {name}\.py.*?)```", re.S)
    (readme,) = block.findall(README.read_text(encoding="utf-8"))
    copies = [(p, c) for p in PAGES for c in block.findall(p.read_text(encoding="utf-8"))]
    assert all(c == readme for _, c in copies), [str(p) for p, c in copies if c != readme]


def test_citation_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    cff = (ROOT / "CITATION.cff").read_text(encoding="utf-8")

    def field(name: str) -> str:
        match = re.search(rf"^{name}:\s*\"?([^\"\n]+?)\"?\s*$", cff, re.M)
        assert match, f"CITATION.cff has no top-level {name}"
        return match.group(1)

    assert field("cff-version") == "1.2.0"
    assert field("title") == project["name"]
    assert field("version") == project["version"]
    assert field("license") == project["license"]["text"]
    assert re.search(r"^preferred-citation:\n(?:\s+.*\n)*?\s+title: \"TRACER: ", cff, re.M)
