"""The README's library snippets, read from the README itself, so the tests run exactly
what a reader copies. A snippet is the ```python block after ``<!-- snippet: NAME -->``."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_snippet(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```python\n(.*?)```", text, flags=re.S)
    if match is None:
        raise AssertionError(
            f"README.md has no snippet {name!r} (<!-- snippet: {name} --> and a python block)"
        )
    return match.group(1)


def snippet_names() -> list[str]:
    return re.findall(r"<!-- snippet: ([\w-]+) -->", README.read_text(encoding="utf-8"))
