"""Machine-readable records of the numbers each notebook reports.

A notebook calls :func:`start` once and :func:`record` for every headline number. Each call rewrites
``<output_dir>/<notebook>.json`` atomically, so a failed run still leaves what it recorded so far.
The runner and the tests read the files back with :func:`load_records`.
"""

from __future__ import annotations

import datetime as _datetime
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

from dsenergy._atomic import write_text_atomically

__all__ = ["current_path", "load_records", "record", "record_value", "start", "to_json"]

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {"path": None, "payload": None}


def to_json(value: Any) -> Any:
    """Convert ``value`` to plain JSON types (numpy and torch scalars and arrays, DataFrames, paths).

    NaN and infinities become ``None`` because JSON has no spelling for them.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_json(item) for item in value]

    # Optional libraries are checked by attribute, so this module imports none of them.
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # pandas DataFrame
        return to_json(value.to_dict(orient="records"))
    if hasattr(value, "to_dict") and hasattr(value, "index"):  # pandas Series
        return to_json(value.to_dict())
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch Tensor
        value = value.detach().cpu().numpy()
    if hasattr(value, "tolist"):  # numpy array or scalar
        return to_json(value.tolist())
    raise TypeError(f"cannot record a value of type {type(value).__name__}; convert it to numbers, strings, "
                    "lists or dicts first")


def _write_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def start(notebook: str, output_dir: str | Path, parameters: Mapping[str, Any] | None = None) -> Path:
    """Begin the records of ``notebook`` in ``output_dir/<notebook>.json`` and return that path.

    An earlier file of the same name is replaced, so the file always describes the latest run.
    """
    path = Path(output_dir).expanduser().resolve() / f"{notebook}.json"
    payload = {
        "notebook": notebook,
        "started": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
        "parameters": to_json(dict(parameters or {})),
        "records": {},
    }
    _write_atomic(path, payload)
    _state["path"], _state["payload"] = path, payload
    logger.info("recording %s to %s", notebook, path)
    return path


def current_path() -> Path | None:
    """Return the records file of the running notebook, or ``None`` before :func:`start`."""
    return _state["path"]


def record(name: str, value: Any, *, unit: str | None = None, description: str | None = None) -> None:
    """Store ``value`` under ``name`` in the current notebook's records file.

    It returns nothing, so a notebook cell that ends with a call displays no stray copy of ``value``.

    Args:
        name: key, unique within the notebook (a later call with the same name replaces the value).
        value: number, string, list, dict, numpy/torch value or DataFrame.
        unit: unit or convention, e.g. ``"AUROC, ID positive, τ = 0.01"``.
        description: one line saying what the number is.
    """
    if _state["path"] is None:
        raise RuntimeError("no notebook records started; call dsenergy.records.start(notebook, output_dir) first")
    entry: dict[str, Any] = {"value": to_json(value)}
    if unit is not None:
        entry["unit"] = unit
    if description is not None:
        entry["description"] = description

    payload = _state["payload"]
    payload["records"][name] = entry
    payload["updated"] = _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds")
    _write_atomic(_state["path"], payload)


def load_records(path: str | Path) -> dict[str, Any]:
    """Read a records file written by :func:`start` and :func:`record`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"records file {path} not found; did the notebook call dsenergy.records.start?")
    with path.open(encoding="utf-8") as stream:
        payload = json.load(stream)
    if "records" not in payload:
        raise ValueError(f"{path} is not a dsenergy records file: it has no 'records' key")
    return payload


def record_value(payload: Mapping[str, Any], name: str) -> Any:
    """Return the value recorded under ``name`` in a payload from :func:`load_records`."""
    records = payload["records"]
    if name not in records:
        raise KeyError(f"{payload.get('notebook', 'notebook')} recorded no {name!r}; recorded: {sorted(records)}")
    return records[name]["value"]
