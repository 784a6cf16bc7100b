import sys
from pathlib import Path

# Helpers shared by tests (conformance runner) live beside them.
sys.path.insert(0, str(Path(__file__).parent))
