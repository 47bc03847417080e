"""Locations of the kit's data and cache folders."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Return the folder holding the committed data (fashion-open arrays, demo checkpoint).

    ``DSENERGY_DATA_DIR`` overrides the default, which is ``data/`` at the repository root
    (the package is installed in editable mode from a clone).
    """
    override = os.environ.get("DSENERGY_DATA_DIR")
    path = Path(override) if override else _REPO_ROOT / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"dsenergy data folder {path} does not exist; install the kit from a clone with "
            "`pip install -e .` or set DSENERGY_DATA_DIR to the folder holding fashion-open/ and models/"
        )
    return path


def cache_dir() -> Path:
    """Return the cache folder: ``DSENERGY_CACHE_DIR`` or ``~/.cache/dsenergy``."""
    override = os.environ.get("DSENERGY_CACHE_DIR")
    return Path(override) if override else Path.home() / ".cache" / "dsenergy"
