"""Rewrite a generated block of README.md: the text between `<!-- NAME:START -->` and `<!-- NAME:END -->`."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def update_block(name: str, text: str) -> None:
    content = README.read_text()
    start, end = f"<!-- {name}:START -->", f"<!-- {name}:END -->"
    if start not in content or end not in content:
        raise SystemExit(f"README.md has no {start} ... {end} block")
    head, rest = content.split(start, 1)
    README.write_text(head + start + "\n" + text.strip() + "\n" + end + rest.split(end, 1)[1])
