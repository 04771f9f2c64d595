"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing anchor or page, or a
docstring the API pages cannot parse fails), and every relative link in README.md points to a file that exists.

mkdocs comes with the ``dev`` extra. Without it the build test is skipped, except under CI (``CI`` set), where
a missing mkdocs is a failure, not a skip."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: ``[text](target)`` and ``![alt](target)``; the target ends at the first space (an optional "title") or ``)``.
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: ``<a href="...">`` / ``<img src="...">`` in raw HTML.
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
#: reference-style definitions: ``[label]: target``.
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _mkdocs_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("mkdocs", "material", "mkdocstrings"))


def test_the_site_builds_strictly(tmp_path):
    if not _mkdocs_available():
        if os.environ.get("CI"):
            pytest.fail("mkdocs, mkdocs-material or mkdocstrings is not installed under CI: pip install -e '.[dev]'")
        pytest.skip("mkdocs not installed (pip install -e '.[dev]')")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    assert (site / "index.html").is_file()
    assert (site / "api" / "modules" / "index.html").is_file()


def relative_links(markdown: str) -> list[str]:
    """The link targets of a markdown text that point into the repository (no URL scheme, no mail, no anchor-only),
    outside code fences and inline code, without their ``#anchor`` or ``?query``."""
    text = FENCE.sub("", markdown)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = MARKDOWN_LINK.findall(text) + HTML_LINK.findall(text) + REFERENCE_LINK.findall(text)
    links = []
    for target in targets:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
            continue  # http:, https:, mailto:, ... and anchors within the page
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if path:
            links.append(path)
    return links


def test_relative_links_finds_links_and_skips_urls_and_code():
    text = ("See [a](docs/a.md#x), ![b](docs/b.png \"title\"), <img src=\"c.png\">, [u](https://x.org/y),\n"
            "[m](mailto:me@x.org), [here](#top), `[not](code.md)`\n```\n[fenced](nope.md)\n```\n[r]: docs/r.md\n")
    assert relative_links(text) == ["docs/a.md", "docs/b.png", "c.png", "docs/r.md"]


def test_every_relative_link_in_the_readme_exists():
    readme = ROOT / "README.md"
    missing = [link for link in relative_links(readme.read_text(encoding="utf-8"))
               if not (readme.parent / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
