"""Rewrite a generated block of a documentation file: the text between `<!-- NAME:START -->` and
`<!-- NAME:END -->`. The benchmarks write their tables into docs/ and a short summary into README.md."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BENCHMARKS_DOC = REPO / "docs" / "benchmarks.md"
SCALING_DOC = REPO / "docs" / "scaling.md"


def update_block(path: Path, name: str, text: str) -> None:
    """Replace the block `name` of the file at `path` with `text` (the markers stay)."""
    content = path.read_text()
    start, end = f"<!-- {name}:START -->", f"<!-- {name}:END -->"
    if start not in content or end not in content:
        raise SystemExit(f"{path.relative_to(REPO)} has no {start} ... {end} block")
    head, rest = content.split(start, 1)
    path.write_text(head + start + "\n" + text.strip() + "\n" + end + rest.split(end, 1)[1])


def repo_relative(path: str | Path) -> str:
    """`path` relative to the repository when it lies inside it (result files must not hold a machine's paths)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPO))
    except ValueError:
        return str(path)
