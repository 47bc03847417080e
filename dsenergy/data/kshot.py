"""K-shot training splits: K seeded draws per class, stored as files keyed by (dataset, K, seed)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

from dsenergy._atomic import write_text_atomically
from dsenergy._paths import cache_dir as default_cache_dir
from dsenergy.data._arrays import array_sha256

__all__ = ["draw_kshot", "kshot_indices", "kshot_path"]

logger = logging.getLogger(__name__)


def draw_kshot(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Draw ``k`` indices per class (labels ≥ 0) without replacement; return them sorted.

    Classes are visited in increasing label order with one generator seeded by ``seed``.
    """
    labels = np.asarray(labels)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    if len(classes) == 0:
        raise ValueError("labels contain no class (every label is negative)")
    short = {int(c): int(n) for c, n in zip(classes, counts) if n < k}
    if short:
        shown = dict(list(short.items())[:20])
        raise ValueError(f"{len(short)} class(es) have fewer than k={k} samples (class: count): {shown}")

    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c in classes]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def kshot_path(dataset_id: str, k: int, seed: int, cache_dir: str | Path | None = None) -> Path:
    """Return the split file path: ``<cache_dir>/splits/<readable id>-<id hash>-k<k>-seed<seed>.json``.

    ``<readable id>`` is ``dataset_id`` with other characters than letters, digits, ``.``, ``_`` and
    ``-`` replaced by ``_``, cut to 80 characters. ``<id hash>`` is the first 12 hex digits of the
    sha256 of the full ``dataset_id``, so ids that differ only in replaced or cut characters still get
    different files. A dataset's ``identity`` already
    ends in a hash of its data, e.g. fashion-open ``id_train`` with k=4 and seed=1 gives
    ``fashion-open-v1_id_train_3c8bda013253fc0d-79b83193988c-k4-seed1.json``.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_id)[:80]
    tag = hashlib.sha256(dataset_id.encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "splits" / f"{readable}-{tag}-k{k}-seed{seed}.json"


def _stored_indices(path: Path, dataset_id: str, k: int, seed: int, labels: np.ndarray) -> np.ndarray | None:
    """Return the stored indices if the file matches this request and these labels, else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        indices = np.asarray(record["indices"], dtype=np.int64)
        meta_ok = (record["dataset_id"], record["k"], record["seed"]) == (dataset_id, k, seed)
        labels_ok = record["labels_sha256"] == array_sha256(labels)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("K-shot file %s is unreadable (%s); drawing the split again", path, error)
        return None
    if not (meta_ok and labels_ok):
        logger.warning("K-shot file %s was made for other labels or settings; drawing the split again", path)
        return None
    if indices.size and (indices.min() < 0 or indices.max() >= len(labels)):
        logger.warning("K-shot file %s has indices out of range; drawing the split again", path)
        return None
    return indices


def kshot_indices(
    labels: np.ndarray, k: int, seed: int, dataset_id: str, cache_dir: str | Path | None = None
) -> np.ndarray:
    """Return K indices per class, reusing the file at :func:`kshot_path` when it matches (dataset_id, k, seed, labels).

    ``cache_dir`` defaults to ``dsenergy._paths.cache_dir()``. A new split is drawn by
    ``draw_kshot`` and written atomically.
    """
    labels = np.asarray(labels, dtype=np.int64)
    path = kshot_path(dataset_id, k, seed, cache_dir)
    if path.is_file():
        indices = _stored_indices(path, dataset_id, k, seed, labels)
        if indices is not None:
            logger.info("K-shot split %s (k=%d, seed=%d) read from %s", dataset_id, k, seed, path)
            return indices

    indices = draw_kshot(labels, k, seed)
    record = {
        "dataset_id": dataset_id,
        "k": k,
        "seed": seed,
        "labels_sha256": array_sha256(labels),
        "indices": indices.tolist(),
    }
    write_text_atomically(path, json.dumps(record, indent=1) + "\n")
    logger.info("K-shot split %s (k=%d, seed=%d): %d indices written to %s", dataset_id, k, seed, len(indices), path)
    return indices
