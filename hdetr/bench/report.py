"""Where a benchmark's results go: one JSON file, written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(path: str | Path, doc: dict) -> Path:
    # Imported here: benchmark modules build the CLI's parser, which must not import torch.
    from ..checkpoint import atomic_write

    path = Path(path)
    text = json.dumps(doc, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
