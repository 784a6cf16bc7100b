"""Where a benchmark's results go: one JSON file, written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

from hdetr.files import atomic_write  # torch-free: benchmark modules build the CLI's parser


def write_report(path: str | Path, doc: dict) -> Path:
    path = Path(path)
    text = json.dumps(doc, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
