"""tests/models holds the helper module `numpy_backend` (pytest's importlib mode puts nothing on
the path; spawned processes inherit this path)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
