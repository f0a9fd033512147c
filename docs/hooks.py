"""mkdocs hook: the benchmark write-ups as pages, read from benchmarks/ where they live.

``benchmarks/RESULTS.md`` links its tables with relative paths (``results/ops.md``,
``README.md``, ``GPU_GRID.md``). Adding every ``benchmarks/*.md`` and ``benchmarks/results/**/*.md``
under the same relative paths in the site keeps those links working without a copy that could
drift. Links to folders (``results/reproduce_cpu_runs/``) have no page: mkdocs reports them at
INFO level and they stay plain links.

``CONTRIBUTING.md`` (the repository root) is added the same way as ``contributing.md``; its
links into ``docs/`` (right on GitHub) are made relative to the site there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def _add(files: Files, config: Any, src: Path, uri: str) -> None:
    files.append(File.generated(config, uri, abs_src_path=str(src)))


def on_files(files: Files, config: Any) -> Files:
    bench = ROOT / "benchmarks"
    pages = [*sorted(bench.glob("*.md")), *sorted((bench / "results").rglob("*.md"))]
    for src in pages:
        _add(files, config, src, src.relative_to(ROOT).as_posix())
    _add(files, config, ROOT / "CONTRIBUTING.md", "contributing.md")
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri == "contributing.md":
        return markdown.replace("](docs/", "](")
    return markdown
