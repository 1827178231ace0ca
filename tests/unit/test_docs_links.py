"""Every relative link in the README and the docs pages leads somewhere: a file or folder of
the repository and, for a `#section` of a Markdown page, one of its headings.

The pages are parsed with markdown-it (CommonMark), so links inside code are not links;
anchors follow GitHub's heading slugs.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "charts/chatbot/README.md",
                *(ROOT / "docs").glob("*.md")])
MD = MarkdownIt("commonmark").enable("table")


def _tokens(page: Path):
    for token in MD.parse(page.read_text(encoding="utf-8")):
        yield token
        yield from token.children or ()


def links(page: Path) -> list[str]:
    """The targets of the page's links and images, as written."""
    out = []
    for token in _tokens(page):
        if token.type == "link_open":
            out.append(str(token.attrs["href"]))
        elif token.type == "image":
            out.append(str(token.attrs["src"]))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    tokens = MD.parse(page.read_text(encoding="utf-8"))
    return {slug(tokens[i + 1].content) for i, t in enumerate(tokens)
            if t.type == "heading_open"}


def broken(page: Path, root: Path = ROOT) -> list[str]:
    bad = []
    for href in links(page):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:
            continue                      # http(s), mailto: not the repository's
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not target.exists():
            bad.append(f"{href}: no such file")
        elif not target.is_relative_to(root):
            bad.append(f"{href}: outside the repository")
        elif parts.fragment and target.suffix == ".md" \
                and parts.fragment not in anchors(target):
            bad.append(f"{href}: no heading #{parts.fragment} in {target.relative_to(root)}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert not broken(page), f"broken links in {page.relative_to(ROOT)}: {broken(page)}"


def test_the_docs_pages_are_linked_from_the_readme():
    """A newcomer finds every page from the README."""
    linked = {(ROOT / urlsplit(h).path).resolve() for h in links(ROOT / "README.md")
              if not urlsplit(h).scheme}
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_a_broken_link_is_found(tmp_path):
    """The check can fail: a missing file, a missing heading, a link in code is no link."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/a.md").write_text("# A page\n\n## Its part\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md) [ok](docs/a.md#its-part) [ok](#top) `[no](nowhere.md)`\n\n"
                    "# Top\n\n[gone](docs/b.md) [bad anchor](docs/a.md#elsewhere)\n\n"
                    "```\n[no](nowhere.md)\n```\n")
    assert broken(page, tmp_path) == ["docs/b.md: no such file",
                            "docs/a.md#elsewhere: no heading #elsewhere in docs/a.md"]
