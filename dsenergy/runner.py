"""Execute the notebook sequence with papermill and collect the numbers it records.

For each selected notebook the runner injects the validated parameters, writes the executed
notebook and an HTML export to the output folder, and finally builds ``results.json`` and
``results.md`` from the records files (:mod:`dsenergy.records`). A failing cell stops the sequence
(unless ``keep_going``) with a :class:`NotebookExecutionError` that names the notebook and the cell.
Everything written up to that point stays in the output folder.
"""

from __future__ import annotations

import datetime as _datetime
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from dsenergy import __version__
from dsenergy.params import (
    NOTEBOOKS,
    ParameterError,
    defaults,
    resolve_notebooks,
    smoke_overrides,
    validate,
)
from dsenergy.records import load_records, to_json

__all__ = [
    "NotebookExecutionError",
    "NotebookResult",
    "RunResult",
    "find_kernel",
    "load_parameters_file",
    "notebooks_dir",
    "run_notebooks",
    "write_results",
]

logger = logging.getLogger(__name__)

_PYTHON_NAMES = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
_PRIVATE_KERNEL = "dsenergy-python"


class NotebookExecutionError(RuntimeError):
    """Error raised when a notebook of the sequence fails; ``notebook`` and ``cell_index`` locate the failure.

    ``cell_index`` is papermill's 0-based position in the executed notebook, which counts the
    injected-parameters cell; the message gives the 1-based cell number in the committed notebook.
    """

    def __init__(self, notebook: str, message: str, cell_index: int | None = None, result: "RunResult | None" = None):
        super().__init__(message)
        self.notebook = notebook
        self.cell_index = cell_index
        self.result = result


@dataclass
class NotebookResult:
    """Outcome of one notebook: status, time, files and the records it wrote."""

    name: str
    status: str  # "ok", "failed" or "skipped"
    duration_s: float = 0.0
    output: Path | None = None
    html: Path | None = None
    records: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None


@dataclass
class RunResult:
    """Outcome of a run of the sequence."""

    out_dir: Path
    parameters: dict[str, Any]
    smoke: bool
    notebooks: list[NotebookResult] = field(default_factory=list)
    started: str = ""
    duration_s: float = 0.0
    kernel_name: str = ""
    #: Notebook files in ``out_dir`` that an earlier run wrote and this run has not replaced.
    earlier_files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every selected notebook ran without error."""
        return all(result.status == "ok" for result in self.notebooks)

    def records(self, notebook: str) -> dict[str, Any]:
        """Return ``name -> value`` of what ``notebook`` recorded."""
        for result in self.notebooks:
            if result.name == notebook:
                return {name: entry["value"] for name, entry in result.records.items()}
        raise KeyError(f"notebook {notebook!r} was not part of this run; ran {[r.name for r in self.notebooks]}")


def notebooks_dir() -> Path:
    """Return the folder of the committed notebooks (``DSENERGY_NOTEBOOKS_DIR`` overrides it)."""
    override = os.environ.get("DSENERGY_NOTEBOOKS_DIR")
    path = Path(override) if override else Path(__file__).resolve().parent.parent / "notebooks"
    if not path.is_dir():
        raise FileNotFoundError(
            f"notebook folder {path} does not exist; run from a clone installed with `pip install -e .` "
            "or set DSENERGY_NOTEBOOKS_DIR"
        )
    return path


def load_parameters_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of parameter names to values."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"parameters file {path} not found")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ParameterError(f"parameters file {path} is not valid YAML: {error}") from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ParameterError(f"parameters file {path} must hold a mapping of names to values, "
                             f"got {type(content).__name__}")
    return content


def _runs_this_python(argv0: str) -> bool:
    if argv0 in _PYTHON_NAMES:
        # jupyter_client replaces a bare "python" / "python3" with sys.executable.
        return True
    try:
        return Path(argv0).resolve() == Path(sys.executable).resolve()
    except OSError:
        return False


def find_kernel(kernel_name: str | None = None, spec_dir: Path | None = None) -> str:
    """Return a Jupyter kernel name that runs this Python, creating a private kernel spec if needed.

    An explicit ``kernel_name`` is checked and returned as is. Otherwise ``python3`` is used when its
    spec starts this interpreter; if it starts another one (a user-level spec of a different
    environment), a spec named ``dsenergy-python`` is written under ``spec_dir`` and added to
    ``JUPYTER_PATH`` for this process, so the environment itself is left unchanged.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    if kernel_name is not None:
        try:
            manager.get_kernel_spec(kernel_name)
        except NoSuchKernel as error:
            raise ValueError(
                f"Jupyter kernel {kernel_name!r} not found; available: {sorted(manager.find_kernel_specs())}. "
                "Install one with `python -m ipykernel install --sys-prefix`"
            ) from error
        return kernel_name

    try:
        spec = manager.get_kernel_spec("python3")
        if _runs_this_python(spec.argv[0]):
            return "python3"
        logger.warning("kernel spec python3 starts %s, not %s; using a private kernel spec",
                       spec.argv[0], sys.executable)
    except NoSuchKernel:
        logger.warning("no python3 kernel spec found; using a private kernel spec")

    base = Path(spec_dir) if spec_dir is not None else Path.home() / ".cache" / "dsenergy" / "jupyter"
    kernel_dir = base / "kernels" / _PRIVATE_KERNEL
    kernel_dir.mkdir(parents=True, exist_ok=True)
    spec_json = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {platform.python_version()} (dsenergy)",
        "language": "python",
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec_json, indent=1), encoding="utf-8")
    jupyter_path = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(base) + (os.pathsep + jupyter_path if jupyter_path else "")
    return _PRIVATE_KERNEL


def _merge_parameters(
    parameters: Mapping[str, Any] | None, smoke: bool, selected: Iterable[str], out_dir: Path
) -> dict[str, Any]:
    if parameters and "output_dir" in parameters:
        raise ParameterError(
            f"parameter 'output_dir' ({parameters['output_dir']!r}) cannot be set in a run of the sequence: "
            "the run writes every notebook's outputs into its own output folder; use --out DIR "
            "(out_dir= in run_notebooks) instead"
        )
    # The user's values are checked first, so only they are reported when no selected notebook uses them.
    validate(dict(parameters or {}), selected)
    merged: dict[str, Any] = dict(smoke_overrides()) if smoke else {}
    merged.update(parameters or {})
    merged["output_dir"] = str(out_dir)
    merged.setdefault("smoke", smoke)
    # papermill has no widget frontend, so notebooks draw static figures unless the caller sets interactive.
    merged.setdefault("interactive", False)
    # The effective values: each selected notebook's defaults, overridden by the merged values. They are
    # checked together, so a default that clashes with a given value (top_c_values against the number
    # of classes under data_root) is reported before any notebook runs.
    effective: dict[str, Any] = {}
    for name in selected:
        effective.update(defaults(name))
    effective.update(merged)
    return validate(effective, selected, warn_unused=False)


def _declared_parameters(path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def _export_html(notebook_path: Path) -> Path | None:
    from nbconvert import HTMLExporter

    try:
        body, _ = HTMLExporter().from_filename(str(notebook_path))
    except Exception as error:  # noqa: BLE001 - an export failure must not hide the run's own result
        logger.error("HTML export of %s failed: %s", notebook_path, error)
        return None
    html_path = notebook_path.with_suffix(".html")
    html_path.write_text(body, encoding="utf-8")
    return html_path


def _read_records(out_dir: Path, name: str) -> dict[str, Any]:
    path = out_dir / f"{name}.json"
    if not path.is_file():
        return {}
    return load_records(path)["records"]


_NOTEBOOK_FILE_SUFFIXES = (".ipynb", ".html", ".json")


def _earlier_files(out_dir: Path, written: Mapping[str, Iterable[str]]) -> list[Path]:
    """Return the files of sequence notebooks in ``out_dir`` that this run does not write.

    ``written`` maps each notebook of this run to the suffixes of the files it writes: the executed
    notebook, the records file and, unless HTML export is off or failed, the HTML export.
    """
    files = []
    for name in NOTEBOOKS:
        skipped_suffixes = [suffix for suffix in _NOTEBOOK_FILE_SUFFIXES if suffix not in written.get(name, ())]
        for suffix in skipped_suffixes:
            path = out_dir / f"{name}{suffix}"
            if path.is_file():
                files.append(path)
    return files


def _files_written(run: RunResult) -> dict[str, list[str]]:
    """Return notebook -> suffixes of the files that ``run`` has written so far."""
    written = {}
    for result in run.notebooks:
        if result.status == "skipped":
            continue
        written[result.name] = [".ipynb", ".json"] + ([".html"] if result.html is not None else [])
    return written


def _warn_about_earlier_files(out_dir: Path, selected: list[str], html: bool) -> None:
    """Log the notebook files of an earlier run in ``out_dir`` that this run will leave as they are."""
    suffixes = [".ipynb", ".json"] + ([".html"] if html else [])
    earlier = _earlier_files(out_dir, {name: suffixes for name in selected})
    if not earlier:
        return
    logger.warning(
        "output folder %s contains files of an earlier run that this run does not replace: %s. "
        "results.md and results.json will cover only %s and list those files as left from the earlier run, "
        "whose parameters may differ; choose a new output folder (--out) to keep runs apart",
        out_dir, ", ".join(path.name for path in earlier), ", ".join(selected),
    )


def _run_one(
    name: str, source: Path, out_dir: Path, parameters: Mapping[str, Any], kernel_name: str,
    progress: bool, html: bool, cell_timeout: int | None,
) -> NotebookResult:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    declared = _declared_parameters(source)
    injected = {key: value for key, value in parameters.items() if key in declared}
    output = out_dir / f"{name}.ipynb"
    stale_records = out_dir / f"{name}.json"
    stale_records.unlink(missing_ok=True)

    result = NotebookResult(name=name, status="ok", output=output)
    began = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters=injected, kernel_name=kernel_name,
            progress_bar=progress, cwd=str(out_dir), execution_timeout=cell_timeout,
        )
    except PapermillExecutionError as error:
        result.status = "failed"
        result.error = {
            "cell_index": error.cell_index,
            "execution_count": error.exec_count,
            "ename": error.ename,
            "evalue": error.evalue,
            "source": error.source,
        }
    except Exception as error:  # noqa: BLE001 - kernel start-up and timeouts are reported per notebook
        result.status = "failed"
        cell_index, execution_count, cell_source = _last_started_cell(output)
        result.error = {"cell_index": cell_index, "execution_count": execution_count, "ename": type(error).__name__,
                        "evalue": str(error), "source": cell_source}
    result.duration_s = time.perf_counter() - began
    if result.error is not None:
        result.error["cell_number"] = _source_cell_number(source, result.error["cell_index"])
        result.error["notebook_path"] = str(source)

    if html and output.is_file():
        result.html = _export_html(output)
    result.records = _read_records(out_dir, name)
    return result


def _last_started_cell(output: Path) -> tuple[int | None, int | None, str]:
    """Return (index, execution count, source) of the last cell that papermill started in ``output``.

    A cell time-out raises nbclient's ``CellTimeoutError`` without a cell index, but papermill has
    written a start time into every cell it began, so the last one is the cell that was running.
    Returns ``(None, None, "")`` when no cell started, as when the kernel fails to start.
    """
    if not output.is_file():
        return None, None, ""
    import nbformat

    try:
        cells = nbformat.read(str(output), as_version=4).cells
    except (OSError, ValueError) as error:
        logger.warning("could not read %s to locate the failing cell: %s", output, error)
        return None, None, ""
    started = [index for index, cell in enumerate(cells)
               if cell.cell_type == "code" and cell.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return None, None, ""
    cell = cells[started[-1]]
    return started[-1], cell.get("execution_count"), cell.get("source", "")


def _source_cell_number(source: Path, cell_index: int | None) -> int | None:
    """Map papermill's 0-based cell index in the executed notebook to a 1-based number in ``source``.

    The executed notebook contains one extra cell, the injected parameters, right after the cell tagged
    ``parameters``. Returns ``None`` for no index or for the injected cell itself.
    """
    if cell_index is None:
        return None
    import nbformat

    cells = nbformat.read(str(source), as_version=4).cells
    tagged = [index for index, cell in enumerate(cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    injected = tagged[0] + 1 if tagged else 0
    if cell_index == injected:
        return None
    return cell_index if cell_index > injected else cell_index + 1


def _failure_location(error: Mapping[str, Any]) -> str:
    """Describe where a notebook failed, as a user finds the cell in the committed notebook."""
    if error.get("cell_index") is None:
        return "kernel start-up"
    execution_note = ""
    if error.get("execution_count"):
        execution_note = f"; shown as In [{error['execution_count']}] in the executed copy"
    if error.get("cell_number") is None:
        return f"the injected-parameters cell{execution_note}"
    return (f"cell {error['cell_number']} of {Path(error.get('notebook_path', '')).name} (1-based, markdown "
            f"cells counted, the injected-parameters cell not counted{execution_note})")


def _failure_message(result: NotebookResult) -> str:
    error = result.error or {}
    return (f"notebook {result.name} failed in {_failure_location(error)}: {error.get('ename')}: "
            f"{error.get('evalue')}; the partial output is in {result.output}")


def run_notebooks(
    parameters: Mapping[str, Any] | None = None,
    *,
    only: str | Iterable[str] | None = None,
    out_dir: str | Path = "dsenergy-run",
    smoke: bool = False,
    source_dir: str | Path | None = None,
    kernel_name: str | None = None,
    html: bool = True,
    progress: bool = True,
    keep_going: bool = False,
    cell_timeout: int | None = None,
) -> RunResult:
    """Validate ``parameters``, execute the selected notebooks in order and write the results files.

    Parameters are applied in the order: each notebook's own defaults, the ``--smoke`` values when
    ``smoke``, then ``parameters``; ``output_dir`` is always ``out_dir``.

    Files of notebooks that this run does not write (other notebooks of the sequence, or HTML
    exports when ``html`` is off) stay in ``out_dir``. The run logs a warning that names them, and
    the results files list them as left from an earlier run.

    Raises:
        ParameterError: before any notebook runs, naming the bad parameter (also when ``parameters``
            sets ``output_dir``; ``out_dir`` sets it).
        ValueError: before any notebook runs, when ``cell_timeout`` is not a positive integer.
        NotebookExecutionError: after the results files are written, when a notebook failed.
    """
    if cell_timeout is not None and (isinstance(cell_timeout, bool) or not isinstance(cell_timeout, int)
                                     or cell_timeout <= 0):
        # papermill and nbclient take 0 and negative timeouts as no limit, so only None selects no limit here.
        raise ValueError(f"cell_timeout must be a positive number of seconds or None for no limit, got {cell_timeout!r}")
    selected = resolve_notebooks(only)
    out_dir = Path(out_dir).expanduser().resolve()
    merged = _merge_parameters(parameters, smoke, selected, out_dir)
    source = Path(source_dir) if source_dir is not None else notebooks_dir()
    missing = [name for name in selected if not (source / f"{name}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(f"notebook {missing[0]}.ipynb not found in {source}")

    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is an existing file; choose a folder path (it is created if missing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    _warn_about_earlier_files(out_dir, selected, html)
    kernel = find_kernel(kernel_name, spec_dir=out_dir / ".jupyter")
    run = RunResult(
        out_dir=out_dir, parameters=merged, smoke=smoke, kernel_name=kernel,
        started=_datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    logger.info("running %d notebook(s) into %s with kernel %s%s", len(selected), out_dir, kernel,
                " at smoke size" if smoke else "")

    began = time.perf_counter()
    failed: NotebookResult | None = None
    for position, name in enumerate(selected, start=1):
        if failed is not None and not keep_going:
            run.notebooks.append(NotebookResult(name=name, status="skipped"))
            continue
        logger.info("[%d/%d] %s", position, len(selected), name)
        result = _run_one(name, source / f"{name}.ipynb", out_dir, merged, kernel, progress, html, cell_timeout)
        run.notebooks.append(result)
        if result.status == "ok":
            logger.info("[%d/%d] %s finished in %.0f s, %d record(s)", position, len(selected), name,
                        result.duration_s, len(result.records))
        else:
            logger.error("%s", _failure_message(result))
            failed = failed or result
        run.duration_s = time.perf_counter() - began
        write_results(run)

    run.duration_s = time.perf_counter() - began
    write_results(run)
    if failed is not None:
        raise NotebookExecutionError(failed.name, _failure_message(failed),
                                     (failed.error or {}).get("cell_index"), run)
    return run


_MARKDOWN_TABLE_ROWS = 40


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, dict) and all(isinstance(item, (int, float, str, bool)) or item is None
                                       for item in value.values()):
        return "; ".join(f"{key}: {_format_value(item)}" for key, item in value.items())
    text = json.dumps(value)
    return text[:120] + ("…" if len(text) > 120 else "")


def _is_table(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    lines = ["| " + " | ".join(_table_cell(column) for column in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:_MARKDOWN_TABLE_ROWS]:
        lines.append("| " + " | ".join(_table_cell(_format_value(row.get(column, ""))) for column in columns) + " |")
    if len(rows) > _MARKDOWN_TABLE_ROWS:
        lines += ["", f"{len(rows) - _MARKDOWN_TABLE_ROWS} more rows in results.json."]
    return lines


def _table_cell(text: Any) -> str:
    """Return ``text`` safe inside a markdown table cell: pipes escaped, line breaks as spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _describe_pretrained(parameters: Mapping[str, Any]) -> str:
    """Return the ``pretrained`` parameter, saying what ``None`` loads for the chosen model."""
    from dsenergy.demo import DEMO_MODEL_NAME

    pretrained = parameters.get("pretrained")
    if pretrained is not None:
        return str(pretrained)
    if parameters.get("model") == DEMO_MODEL_NAME:
        return "None, the committed demo checkpoint; the weights_id records give its sha256"
    return "None, random weights"


def _results_markdown(run: RunResult) -> str:
    status = "all notebooks ran" if run.ok else "FAILED"
    lines = [
        "# dsenergy results",
        "",
        f"Run started {run.started}, took {run.duration_s:.0f} s, {status}. "
        f"Smoke size: {run.smoke}. Model: {run.parameters.get('model')} "
        f"(pretrained: {_describe_pretrained(run.parameters)}), benchmark: {run.parameters.get('benchmark')}.",
        "",
        "| notebook | status | time (s) | records |",
        "|---|---|---|---|",
    ]
    for result in run.notebooks:
        lines.append(f"| {result.name} | {result.status} | {result.duration_s:.0f} | {len(result.records)} |")
    if run.earlier_files:
        names = ", ".join(f"`{path.name}`" for path in run.earlier_files)
        lines += ["", f"Left from an earlier run, whose parameters may differ, and not part of these results: {names}."]

    for result in run.notebooks:
        lines += ["", f"## {result.name}", ""]
        if result.error:
            lines += [f"Failed in {_failure_location(result.error)}: "
                      f"{result.error.get('ename')}: {result.error.get('evalue')}", ""]
        scalars = [(name, entry) for name, entry in result.records.items() if not _is_table(entry["value"])]
        tables = [(name, entry) for name, entry in result.records.items() if _is_table(entry["value"])]
        if scalars:
            lines += ["| record | value | unit | description |", "|---|---|---|---|"]
            for name, entry in scalars:
                cells = [name, _format_value(entry["value"]), entry.get("unit", ""), entry.get("description", "")]
                lines.append("| " + " | ".join(_table_cell(cell) for cell in cells) + " |")
        for name, entry in tables:
            lines += ["", f"### {name}", ""]
            if entry.get("unit") or entry.get("description"):
                unit = f"Unit: {entry['unit'].rstrip('.')}." if entry.get("unit") else ""
                description = entry.get("description", "").rstrip(".")
                lines += [" ".join(filter(None, [f"{description}." if description else "", unit])), ""]
            lines += _markdown_table(entry["value"])
        if not result.records and result.status != "skipped":
            lines.append("No records.")
    return "\n".join(lines) + "\n"


def write_results(run: RunResult) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` for ``run`` into its output folder.

    Also sets ``run.earlier_files`` to the notebook files in the folder that ``run`` has not written.
    """
    run.earlier_files = _earlier_files(run.out_dir, _files_written(run))
    payload = {
        "dsenergy_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "kernel": run.kernel_name,
        "started": run.started,
        "duration_s": round(run.duration_s, 1),
        "smoke": run.smoke,
        "ok": run.ok,
        "parameters": to_json(run.parameters),
        "notebooks": {
            result.name: {
                "status": result.status,
                "duration_s": round(result.duration_s, 1),
                "output": str(result.output) if result.output else None,
                "html": str(result.html) if result.html else None,
                "error": result.error,
                "records": result.records,
            }
            for result in run.notebooks
        },
        "sequence": list(NOTEBOOKS),
        "earlier_run_files": [path.name for path in run.earlier_files],
    }
    json_path = run.out_dir / "results.json"
    markdown_path = run.out_dir / "results.md"
    json_path.write_text(json.dumps(to_json(payload), indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(_results_markdown(run), encoding="utf-8")
    return json_path, markdown_path
