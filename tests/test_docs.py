"""The documentation holds together: the MkDocs site builds in strict mode (a broken link, a
link to a missing anchor, or a page left out of the navigation stops it), the README's links
resolve (they must work on GitHub as well), the source paths and names the pages cite exist,
and the pages are written so that MkDocs renders them as GitHub does.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "rlhfkit"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), not images


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of `config` into `site` (what `make docs` runs)."""
    # Not -q: it hides warnings, and strict mode then counts none (a broken link passes).
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    return subprocess.run(cmd + ["-d", str(site)], capture_output=True, text=True, timeout=120)


def prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a Markdown text outside fenced code blocks."""
    out, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append((i, line))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[`*\[\]()]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {
        github_slug(line.lstrip("#"))
        for _, line in prose(page.read_text(encoding="utf-8"))
        if re.match(r"#{1,6} ", line)
    }


# --- The site ---------------------------------------------------------------------------


def test_the_site_builds_strictly(tmp_path):
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_a_broken_link_a_missing_anchor_or_a_page_out_of_the_nav_fails_the_build(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    config = config.replace("  - Home: index.md\n", "  - Home: index.md\n  - Gone: gone.md\n")
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    first = tmp_path / "docs" / "index.md"
    first.write_text(first.read_text() + "\n[a](no-such-page.md) [b](sft.md#no-such-anchor)\n")
    (tmp_path / "docs" / "left-out.md").write_text("# Left out\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    log = result.stderr
    assert "'no-such-page.md', but the target is not found" in log
    assert "does not contain an anchor '#no-such-anchor'" in log
    assert 'not included in the "nav" configuration' in log and "left-out.md" in log
    assert "'gone.md' is included in the 'nav' configuration, which is not found" in log


# --- Links and the names the pages cite -------------------------------------------------


def broken_links(page: Path, text: str) -> list[str]:
    """The relative links of a Markdown `text` at `page` whose file or GitHub anchor is
    missing (web addresses are not followed)."""
    bad = []
    for n, line in prose(text):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path) if path else page
            if not dest.exists():
                bad.append(f"{n}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{n}: {target}: no heading with that anchor (GitHub's slugs)")
    return bad


@pytest.mark.parametrize("name", ["README.md", "bench/README.md", "bench/RESULTS.md"])
def test_the_readme_links_resolve(name):
    """README.md links to docs/ pages, bench/ and sources as relative paths, so they work
    on GitHub too (as bench/'s pages do); each file and anchor must exist."""
    page = ROOT / name
    bad = broken_links(page, page.read_text(encoding="utf-8"))
    assert not bad, f"{name}:\n" + "\n".join(bad)


def test_the_link_check_sees_a_missing_file_and_a_missing_anchor():
    text = "[a](docs/sft.md) [b](docs/no-such.md) [c](docs/sft.md#every-epoch-is-kept) [d](docs/sft.md#nope)"
    bad = broken_links(ROOT / "README.md", text)
    assert [b.split(":")[1].strip() for b in bad] == ["docs/no-such.md", "docs/sft.md#nope"]
    assert github_slug("Evaluation: `rlhfkit rm eval`") == "evaluation-rlhfkit-rm-eval"
    assert github_slug("Seeds 3-5 (issues 14 and 17)") == "seeds-3-5-issues-14-and-17"


def test_anchors_in_the_pages_also_work_on_github():
    """MkDocs checks anchors with its own slugs; GitHub renders docs/*.md with its own."""
    bad = []
    for page in PAGES:
        for n, line in prose(page.read_text(encoding="utf-8")):
            for target in LINK.findall(line):
                path, _, anchor = target.partition("#")
                if anchor and not re.match(r"[a-z]+://", target):
                    dest = (page.parent / path) if path else page
                    if dest.exists() and anchor not in anchors(dest):
                        bad.append(f"{page.relative_to(ROOT)}:{n}: {target}")
    assert not bad, "\n".join(bad)


def _defined(module: Path) -> set[str]:
    """Top-level names of a module: functions, classes, assignments, imports."""
    names: set[str] = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _module_file(parts: list[str]) -> Path | None:
    path = SRC.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def cited_problem(token: str) -> str | None:
    """Why a code span naming a source file or a dotted rlhfkit name is stale, or None.

    `path/to/file.py` (from the repository root, src/ or src/rlhfkit/), optionally
    `::name`; `rlhfkit.a.b.name` or `a.b.name` where `a` is a package of rlhfkit."""
    path, _, name = token.partition("::")
    if not re.fullmatch(r"[\w./-]+", path):  # a template: tests/loops/test_<stage>.py
        return None
    doc = path.startswith(("docs/", "bench/")) and path.endswith(".md")
    if "/" in path and (path.endswith(".py") or doc):
        found = [b / path for b in (ROOT, ROOT / "src", SRC) if (b / path).is_file()]
        if not found:
            return "no such file"
        if name and name.split(".")[0] not in _defined(found[0]):
            return f"{path} defines no {name.split('.')[0]}"
        return None
    parts = token.removeprefix("rlhfkit.").split(".")
    packages = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    packages -= {"__init__", "logging"}  # logging.x is the standard library's
    if not re.fullmatch(r"[\w.]+", token) or len(parts) < 2 or parts[0] not in packages:
        return None
    if re.search(r"\.(py|json|jsonl|yaml|md|png|txt|safetensors)$", token):  # a file name
        return None
    for i in range(len(parts), 0, -1):  # the longest prefix that is a module
        module = _module_file(parts[:i])
        if module:
            rest = parts[i:]
            ok = not rest or rest[0] in _defined(module)
            return None if ok else f"{'.'.join(parts[:i])} defines no {rest[0]}"
    return "no such module"


def test_cited_source_paths_and_names_exist():
    bad = []
    for page in [ROOT / "README.md", *PAGES]:
        for n, line in prose(page.read_text(encoding="utf-8")):
            for token in re.findall(r"`([^`\s]+)`", line):
                problem = cited_problem(token)
                if problem:
                    bad.append(f"{page.relative_to(ROOT)}:{n}: `{token}`: {problem}")
    assert not bad, "\n".join(bad)


def test_the_stale_name_check_can_fail():
    assert cited_problem("src/rlhfkit/no_such_module.py") == "no such file"
    assert cited_problem("sampling/generator.py::ENGINES") is None
    assert cited_problem("sampling/generator.py::NO_SUCH") is not None
    assert cited_problem("rlhfkit.world.format_prompt") is None
    assert cited_problem("rlhfkit.world.no_such_name") is not None
    assert cited_problem("report.plots.plot_max_median") is None
    assert cited_problem("report_plots.plot_max_median") is None  # not an rlhfkit package


# --- Written so that MkDocs renders it as GitHub does -------------------------------------

ITEM = re.compile(r"^(\s*)([-*+]|\d+\.) ")


def rendering_problems(text: str) -> list[str]:
    """Where Python-Markdown (MkDocs) renders `text` otherwise than GitHub does: it needs a
    blank line before a list or a table, and nested list items indented by 4 spaces."""
    bad, prev, fenced = [], "", False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        item = None if fenced else ITEM.match(line)
        paragraph = prev.strip() and not prev.startswith((" ", "|", "#")) and not ITEM.match(prev)
        if item and not item.group(1) and paragraph:
            bad.append(f"{n}: a list needs a blank line before it")
        if item and 0 < len(item.group(1)) < 4:
            bad.append(f"{n}: indent a nested list item by 4 spaces")
        if not fenced and line.startswith("|") and prev.strip() and not prev.startswith("|"):
            bad.append(f"{n}: a table needs a blank line before it")
        prev = line
    return bad


def test_the_rendering_check_sees_each_mistake():
    assert rendering_problems("Text\n- a\n") == ["2: a list needs a blank line before it"]
    assert rendering_problems("- a\n  - b\n") == ["2: indent a nested list item by 4 spaces"]
    assert rendering_problems("Text\n| a |\n|---|\n") == ["2: a table needs a blank line before it"]
    fine = "Text\n\n- a\n  more of a\n    - b\n\n| a |\n|---|\n\n```\nx\n- y\n```\n"
    assert rendering_problems(fine) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_lists_and_tables_render_on_the_site(page):
    """A page can look right on GitHub and render as one run-on paragraph on the site."""
    bad = rendering_problems(page.read_text(encoding="utf-8"))
    assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


def _first_table(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_the_home_page_and_the_readme_show_the_same_stage_table():
    readme = _first_table((ROOT / "README.md").read_text(encoding="utf-8"))
    home = _first_table((DOCS / "index.md").read_text(encoding="utf-8"))
    assert readme == home and len(readme) > 5
