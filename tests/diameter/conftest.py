"""Makes the helper modules of tests/diameter (``diameter_dump``, ``oracles``) importable.

The tests run in rootdir mode without ``__init__.py`` files, and under
``--import-mode=importlib`` pytest does not put this directory on sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
