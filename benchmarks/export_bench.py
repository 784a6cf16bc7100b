"""Same as ``hdetr bench export`` (kept for scripts that call this file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hdetr.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "export", *sys.argv[1:]]))
