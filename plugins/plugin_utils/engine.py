"""Make the engine package (`accelerator`) importable from the collection's own copy.

Installed with pip, `accelerator` is on sys.path already.  Installed as a collection (or used
from a checkout through ANSIBLE_COLLECTIONS_PATH), the engine sits at the collection's root,
beside `plugins/`: that root goes on sys.path, because the engine imports itself by its own name.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import accelerator  # noqa: F401
except ImportError:
    sys.path.append(str(Path(__file__).resolve().parents[2]))
    import accelerator  # noqa: F401
