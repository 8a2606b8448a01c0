"""The run log every benchmark keeps: one JSON row per finished run, appended at once, so a long run
that is stopped keeps what it finished; summaries are rebuilt from the whole log."""

from __future__ import annotations

import json
from pathlib import Path


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
