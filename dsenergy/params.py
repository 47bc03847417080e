"""Declared parameters of the notebook sequence and their validation.

Every notebook has one cell tagged ``parameters``. Its names, defaults and smoke-size values are
declared here once (the notebook generator writes the cell from this schema), so
``dsenergy run`` can reject a bad value before any notebook starts and name the parameter.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

__all__ = [
    "NOTEBOOKS",
    "SCHEMA",
    "Parameter",
    "ParameterError",
    "defaults",
    "notebook_parameters",
    "parameters_cell_source",
    "parse_cli_value",
    "resolve_notebooks",
    "smoke_overrides",
    "validate",
    "validate_notebook",
]

logger = logging.getLogger(__name__)

#: The notebook sequence, in run order (file stems under ``notebooks/``).
NOTEBOOKS: tuple[str, ...] = (
    "01_energy_change",
    "02_delta_energy_detection",
    "03_hessian_consistency",
    "04_finetune",
    "05_evaluation",
)

_ALL = NOTEBOOKS
_DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
# The pattern of fashion-open's covariate split names: covariate/<shift>/<severity>.
_FASHION_COVARIATE_SPLIT = re.compile(r"covariate/[^/]+/[^/]+")
# Class names listed in an error message before it is cut short.
_LISTED_NAMES = 5
_UNSET: Any = object()


class ParameterError(ValueError):
    """A notebook parameter has an unknown name, a wrong type or an invalid value."""


@dataclass(frozen=True)
class Parameter:
    """One notebook parameter: its type, default, smoke-size value and the notebooks that declare it.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``path``, ``list[int]``, ``list[float]``,
    or ``list[str]``. ``check`` receives the converted value and returns an error
    message, or ``None`` when the value is valid.
    """

    name: str
    kind: str
    default: Any
    help: str
    notebooks: tuple[str, ...] = _ALL
    smoke: Any = _UNSET
    nullable: bool = False
    check: Callable[[Any], str | None] | None = field(default=None, compare=False, repr=False)

    @property
    def has_smoke(self) -> bool:
        """Whether ``--smoke`` sets this parameter to a value of its own."""
        return self.smoke is not _UNSET


# --- value checks ----------------------------------------------------------------------------


def _positive(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    bad = [item for item in items if item <= 0]
    return f"must be positive, got {bad[0]!r}" if bad else None


def _non_negative(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    bad = [item for item in items if item < 0]
    return f"must be zero or positive, got {bad[0]!r}" if bad else None


def _open_unit_interval(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    bad = [item for item in items if not 0.0 < item < 1.0]
    return f"must be in (0, 1), got {bad[0]!r}" if bad else None


def _non_empty(value: Any) -> str | None:
    return "must not be empty" if len(value) == 0 else None


def _device(value: str) -> str | None:
    base, _, index = value.partition(":")
    if base not in _DEVICE_NAMES:
        return f"must be one of {list(_DEVICE_NAMES)} (optionally with an index, e.g. 'cuda:1'), got {value!r}"
    if base == "cuda":
        import torch

        if not torch.cuda.is_available():
            return f"is {value!r}, but CUDA is not available on this machine; use 'auto' or 'cpu'"
        if index:
            count = torch.cuda.device_count()
            if not index.isdigit() or int(index) >= count:
                return (f"is {value!r}, but this machine has {count} CUDA device(s) (indices 0 to {count - 1}); "
                        "use 'auto', 'cuda' or 'cpu'")
    if base == "mps":
        import torch

        if not torch.backends.mps.is_available():
            return f"is {value!r}, but MPS is not available on this machine; use 'auto' or 'cpu'"
    return None


def _choice(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {list(choices)}, got {value!r}"

    return check


def _score_names(value: list[str]) -> str | None:
    if not value:
        return "must name at least one score"
    from dsenergy.scores import SCORES

    known = sorted(SCORES) + ["delta_energy_feature_mask"]
    unknown = [name for name in value if name not in known]
    if unknown:
        return f"contains unknown score {unknown[0]!r}; choose from {known}"
    return None


def _all(*checks: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        for single in checks:
            message = single(value)
            if message:
                return message
        return None

    return check


# --- the schema ------------------------------------------------------------------------------

_PARAMETERS: tuple[Parameter, ...] = (
    # Model and data.
    Parameter("model", "str", "dsenergy-demo",
              "open_clip model name; 'dsenergy-demo' is the bundled offline model, e.g. 'ViT-B-32' for a real CLIP"),
    Parameter("pretrained", "str", None, "open_clip pretrained tag or checkpoint path, e.g. 'openai'; "
              "None loads the bundled checkpoint of the demo model (other models need a tag or a file)", nullable=True),
    Parameter("benchmark", "str", "fashion-open",
              "'fashion-open' (embedded benchmark) or 'folders' (your images under data_root)",
              check=_choice("fashion-open", "folders")),
    Parameter("data_root", "path", None,
              "folder with your images when benchmark is 'folders' (layout in the README)", nullable=True),
    Parameter("ood_splits", "list[str]", ["ood_near", "ood_far", "ood_clipart"],
              "OOD test splits: fashion-open names, or folders under data_root whose path starts with 'ood'",
              check=_non_empty),
    Parameter("covariate_splits", "list[str]",
              ["covariate/noise/2", "covariate/blur/2", "covariate/rotate/2", "covariate/style/2"],
              "covariate-shifted ID splits: 'covariate/<shift>/<severity>' on fashion-open, or folders under "
              "data_root whose path starts with 'covariate'",
              smoke=["covariate/noise/2", "covariate/rotate/2"], check=_non_empty),
    Parameter("device", "str", "auto", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", check=_device),
    Parameter("batch_size", "int", 128, "images per forward pass during feature extraction", check=_positive),
    Parameter("output_dir", "str", "outputs", "folder for the records JSON (and the executed notebook)"),
    Parameter("smoke", "bool", False, "whether this is a smoke-size run (recorded with the results)", smoke=True),
    Parameter("seed", "int", 1, "random seed for sampling and training",
              notebooks=NOTEBOOKS[:4], check=_non_negative),
    Parameter("n_per_split", "int", 1000, "images drawn from each test split (ID, each OOD and covariate split)",
              smoke=200, check=_positive),
    # Scores.
    Parameter("temperature", "float", None, "τ that replaces the model's own 1/logit_scale in every score and "
              "loss that uses it, while MCM keeps its τ of 1; None uses the model's",
              nullable=True, check=_positive),
    Parameter("top_c", "int", 1, "number c of largest similarities that ΔEnergy crops", check=_positive),
    Parameter("crop_value", "float", 0.0, "value a the cropped similarities are set to"),
    Parameter("mask_fraction", "float", 0.1, "fraction ρ of image-feature dimensions the feature-mask ΔE zeroes",
              notebooks=("01_energy_change", "02_delta_energy_detection"), check=_open_unit_interval),
    Parameter("interactive", "bool", True, "show ipywidgets sliders; papermill runs set False for static figures",
              notebooks=("01_energy_change",), smoke=False),
    Parameter("score_names", "list[str]",
              ["msp", "mcm", "max_logit", "max_cosine", "energy", "delta_energy", "delta_energy_feature_mask"],
              "scores to compare (names from dsenergy.scores.SCORES, plus 'delta_energy_feature_mask')",
              notebooks=("02_delta_energy_detection", "05_evaluation"), check=_score_names),
    Parameter("positive", "str", "id", "metric convention: 'id' (MCM lineage) or 'ood' (OpenOOD) as positive class",
              notebooks=("02_delta_energy_detection", "05_evaluation"), check=_choice("id", "ood")),
    # Prompt tuning.
    Parameter("shots", "int", 16, "training images per class (K-shot)",
              notebooks=NOTEBOOKS[2:], smoke=4, check=_positive),
    Parameter("epochs", "int", 20, "prompt-tuning epochs", notebooks=NOTEBOOKS[2:], smoke=3, check=_positive),
    Parameter("n_context", "int", 16, "number of learned CoOp context vectors",
              notebooks=NOTEBOOKS[2:], smoke=4, check=_positive),
    Parameter("learning_rate", "float", 0.002, "SGD learning rate for the context vectors",
              notebooks=NOTEBOOKS[2:], check=_positive),
    Parameter("ebm_weight", "float", 0.5, "weight λ of the EBM loss in CoOp+EBM",
              notebooks=NOTEBOOKS[2:], check=_non_negative),
    Parameter("bound", "str", "lower", "EBM training target: 'lower' bound or 'exact' ΔE",
              notebooks=NOTEBOOKS[2:], check=_choice("lower", "exact")),
    Parameter("ebm_weights", "list[float]", [0.0, 0.1, 0.5, 1.0, 2.0], "λ values of the sweep",
              notebooks=("04_finetune",), smoke=[0.0, 1.0], check=_all(_non_empty, _non_negative)),
    Parameter("top_c_values", "list[int]", [1, 2, 3], "c values of the sweep",
              notebooks=("04_finetune",), smoke=[1, 2], check=_all(_non_empty, _positive)),
    # Hessian.
    Parameter("hessian_top_k", "int", 5, "top Hessian eigenvalues per domain",
              notebooks=("03_hessian_consistency",), smoke=2, check=_positive),
    Parameter("hessian_iterations", "int", 50, "power-iteration / Lanczos steps per eigenvalue",
              notebooks=("03_hessian_consistency",), smoke=6, check=_positive),
    Parameter("hutchinson_samples", "int", 50, "random probes for the Hutchinson estimates of traces and Hessian "
              "consistency", notebooks=("03_hessian_consistency", "05_evaluation"), smoke=6, check=_positive),
    # Evaluation.
    Parameter("seeds", "list[int]", [1, 2, 3], "seeds for the repeated runs of the final table",
              notebooks=("05_evaluation",), smoke=[1, 2], check=_all(_non_empty, _non_negative)),
    Parameter("n_bootstrap", "int", 1000, "bootstrap resamples for confidence intervals",
              notebooks=("05_evaluation",), smoke=200, check=_positive),
    Parameter("confidence", "float", 0.95, "confidence level of the bootstrap intervals",
              notebooks=("05_evaluation",), check=_open_unit_interval),
)

#: Parameter name -> declaration, for every parameter of the sequence.
SCHEMA: dict[str, Parameter] = {parameter.name: parameter for parameter in _PARAMETERS}


# --- helpers ---------------------------------------------------------------------------------


def notebook_parameters(notebook: str) -> list[Parameter]:
    """Return the parameters that ``notebook`` declares, in schema order."""
    if notebook not in NOTEBOOKS:
        raise ParameterError(f"unknown notebook {notebook!r}; the sequence is {list(NOTEBOOKS)}")
    return [parameter for parameter in _PARAMETERS if notebook in parameter.notebooks]


def defaults(notebook: str | None = None) -> dict[str, Any]:
    """Return the default values of one notebook's parameters, or of all parameters."""
    parameters = _PARAMETERS if notebook is None else notebook_parameters(notebook)
    return {parameter.name: parameter.default for parameter in parameters}


def smoke_overrides() -> dict[str, Any]:
    """Return the values ``--smoke`` sets (CI size)."""
    return {parameter.name: parameter.smoke for parameter in _PARAMETERS if parameter.has_smoke}


def parse_cli_value(text: str) -> Any:
    """Parse one ``-p KEY VALUE`` value as YAML (``3`` is an int, ``[1, 2]`` a list, ``null`` None)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParameterError(f"value {text!r} is not valid YAML: {error}") from error


def resolve_notebooks(only: str | Iterable[str] | None, option: str = "--only") -> list[str]:
    """Return the notebooks selected by ``only`` ('01,03', names or stems); all when ``None``.

    ``option`` is the command-line option that ``only`` came from; error messages name it.
    """
    if only is None:
        return list(NOTEBOOKS)
    items = only.split(",") if isinstance(only, str) else list(only)
    selected: list[str] = []
    for item in (str(entry).strip() for entry in items):
        if not item:
            continue
        stem = item[:-6] if item.endswith(".ipynb") else item
        matches = [name for name in NOTEBOOKS if name == stem or name.split("_", 1)[0] == stem.zfill(2)]
        if not matches:
            raise ParameterError(f"{option} names unknown notebook {item!r}; use numbers such as 01,03 or names from "
                                 f"{list(NOTEBOOKS)}")
        if matches[0] not in selected:
            selected.append(matches[0])
    if not selected:
        raise ParameterError(f"{option} selects no notebook; use numbers such as 01,03")
    return [name for name in NOTEBOOKS if name in selected]


def _convert(parameter: Parameter, value: Any) -> Any:
    """Convert ``value`` to the parameter's kind or raise a ParameterError that names the parameter."""
    name, kind = parameter.name, parameter.kind

    def fail(expected: str) -> ParameterError:
        return ParameterError(
            f"parameter {name!r} must be {expected}, got {value!r} ({type(value).__name__}); {parameter.help}"
        )

    if value is None:
        if parameter.nullable:
            return None
        raise fail(f"a {kind}, not null")

    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail("a finite number")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if kind == "path":
        if not isinstance(value, (str, Path)):
            raise fail("a path")
        path = Path(value).expanduser()
        if not path.exists():
            raise ParameterError(f"parameter {name!r}: path {str(path)!r} does not exist; {parameter.help}")
        # Notebooks run in their own working folder, so a relative path is made absolute here.
        return str(path.resolve())
    if kind.startswith("list["):
        item_kind = kind[5:-1]
        if not isinstance(value, (list, tuple)):
            raise ParameterError(
                f"parameter {name!r} must be a list of {item_kind}, got {value!r} ({type(value).__name__}); "
                f"{_list_hint(name, value)}; {parameter.help}"
            )
        item = Parameter(name, item_kind, None, parameter.help)
        return [_convert(item, entry) for entry in value]
    raise AssertionError(f"schema error: parameter {name!r} has unknown kind {kind!r}")


def _list_hint(name: str, value: Any) -> str:
    """Return advice to write ``value`` as a YAML list, for a parameter that expects a list.

    A single value is not taken as a one-element list, because for ``seeds`` or ``top_c_values`` a
    bare number could as well mean a count. A comma-separated string is split into its items.
    """
    items: list[Any] = []
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    if not items:
        return "write it as a YAML list such as [a, b]"
    example = yaml.safe_dump(items, default_flow_style=True, width=math.inf).strip()
    return f"write it as a YAML list: {example} in a parameters file, -p {name} \"{example}\" on the command line"


def validate(
    values: Mapping[str, Any], notebooks: Iterable[str] | None = None, warn_unused: bool = True
) -> dict[str, Any]:
    """Check names, types and values of ``values`` against the schema and return the converted values.

    With ``warn_unused``, a parameter that none of ``notebooks`` declares is logged as a warning.

    Raises:
        ParameterError: naming the first unknown parameter, wrong type or invalid value, and what
            the parameter sets.
    """
    selected = list(NOTEBOOKS if notebooks is None else notebooks)
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if name not in SCHEMA:
            close = difflib.get_close_matches(name, list(SCHEMA), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known parameters: {sorted(SCHEMA)}"
            raise ParameterError(f"unknown parameter {name!r}{hint}")

        parameter = SCHEMA[name]
        result = _convert(parameter, value)
        if result is not None and parameter.check is not None:
            message = parameter.check(result)
            if message:
                raise ParameterError(f"parameter {name!r} {message}; {parameter.help}")
        converted[name] = result

        if warn_unused and not any(notebook in parameter.notebooks for notebook in selected):
            logger.warning("parameter %r is not used by the selected notebooks %s", name, selected)

    _check_splits(converted)
    _check_folders(converted, selected)
    _check_top_c(converted, selected)
    _check_weights(converted)
    return converted


def _check_weights(values: dict[str, Any]) -> None:
    """Check the model name and its weights source as far as that is possible offline.

    A ``pretrained`` that names an existing file is made absolute in ``values``, because the
    notebooks run in their own working folder.
    """
    if "model" not in values and "pretrained" not in values:
        return
    from dsenergy.models import weights_problem

    model = values.get("model", SCHEMA["model"].default)
    pretrained = values.get("pretrained", SCHEMA["pretrained"].default)
    problem = weights_problem(model, pretrained)
    if problem:
        name, message = problem
        raise ParameterError(f"parameter {name!r}: {message}")
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        values["pretrained"] = str(Path(pretrained).expanduser().resolve())


def _id_class_count(values: Mapping[str, Any]) -> int | None:
    """Return the number of ID classes of the chosen benchmark, or ``None`` when it is not known yet."""
    benchmark = values.get("benchmark", SCHEMA["benchmark"].default)
    if benchmark == "fashion-open":
        from dsenergy.data import FASHION_ID_CLASSES

        return len(FASHION_ID_CLASSES)
    data_root = values.get("data_root", SCHEMA["data_root"].default)
    id_test = Path(data_root) / "id_test" if data_root is not None else None
    if id_test is None or not id_test.is_dir():
        return None
    from dsenergy.data.folders import subfolder_names

    # _check_folders has already rejected an id_test folder without class folders, when validate runs both.
    return len(subfolder_names(id_test)) or None


def _check_top_c(values: Mapping[str, Any], notebooks: Iterable[str]) -> None:
    """Check that each given number of cropped classes that ``notebooks`` use is at most the number of ID classes."""
    names = [name for name in ("top_c", "top_c_values")
             if name in values and any(notebook in SCHEMA[name].notebooks for notebook in notebooks)]
    count = _id_class_count(values) if names else None
    if count is None:
        return
    benchmark = values.get("benchmark", SCHEMA["benchmark"].default)
    where = "fashion-open" if benchmark == "fashion-open" else f"{Path(values['data_root']) / 'id_test'}"
    for name in names:
        value = values[name]
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item > count:
                raise ParameterError(f"parameter {name!r} is {value!r}, but {where} has {count} ID classes; "
                                     f"ΔEnergy can crop at most {count} classes, so use values from 1 to {count}")


def _check_splits(values: Mapping[str, Any]) -> None:
    """Check that every named split exists in the chosen benchmark, naming the parameter if not."""
    benchmark = values.get("benchmark", SCHEMA["benchmark"].default)
    data_root = values.get("data_root", SCHEMA["data_root"].default)
    if benchmark == "folders" and data_root is None:
        raise ParameterError("parameter 'data_root' is required when benchmark='folders'; "
                             "set it to the folder holding id_train/, id_test/ and your OOD folders")
    if benchmark == "fashion-open" and data_root is not None:
        raise ParameterError(f"parameter 'data_root' is set to {data_root!r}, but benchmark 'fashion-open' reads "
                             "the embedded benchmark and would ignore it; add -p benchmark folders to read your "
                             "images under data_root, or drop data_root")

    for name, role in (("ood_splits", "ood"), ("covariate_splits", "covariate")):
        splits = values.get(name, SCHEMA[name].default)
        for split in splits:
            if not split.startswith(role):
                raise ParameterError(f"parameter {name!r}: split {split!r} must start with {role!r}, "
                                     "so its role (OOD or covariate shift) follows from its name")
            if benchmark == "fashion-open":
                from dsenergy.data.fashion_open import fashion_open_splits

                known = fashion_open_splits()
                if split not in known:
                    hint = ""
                    if _looks_like_folder(split):
                        hint = ("; fashion-open reads no folders, so to use your own images add "
                                "-p benchmark folders -p data_root DIR, which reads each split from a folder "
                                "under data_root")
                    raise ParameterError(f"parameter {name!r}: fashion-open has no split {split!r}; "
                                         f"choose from {[k for k in known if k.startswith(role)]}{hint}")
            elif not (Path(data_root) / split).is_dir():
                raise ParameterError(f"parameter {name!r}: folder {Path(data_root) / split} does not exist; "
                                     "each split is a folder under data_root")
    if benchmark == "folders":
        for split in ("id_train", "id_test"):
            if not (Path(data_root) / split).is_dir():
                raise ParameterError(f"parameter 'data_root': folder {Path(data_root) / split} does not exist; "
                                     "benchmark 'folders' needs id_train/<class>/ and id_test/<class>/")


def _looks_like_folder(split: str) -> bool:
    """Return whether a split name is written like a folder path rather than a fashion-open split name."""
    if "\\" in split or split.endswith("/"):
        return True
    return "/" in split and not _FASHION_COVARIATE_SPLIT.fullmatch(split)


def _check_folders(values: Mapping[str, Any], notebooks: Iterable[str]) -> None:
    """Check the class folders under data_root for benchmark 'folders', from directory listings only.

    id_train and id_test need the same class folders, each covariate split a subset of them, and every
    class folder at least one image file. When ``values`` contain ``shots`` and a notebook of ``notebooks``
    declares it, every id_train class also needs ``shots`` image files. Files are counted by suffix
    (:data:`dsenergy.data.folders.IMAGE_EXTENSIONS`) without being opened.
    """
    # NOTE: the loaders later drop files that PIL cannot read, so a class can pass the shots check here
    # and still have too few images for the K-shot draw.
    if values.get("benchmark", SCHEMA["benchmark"].default) != "folders":
        return
    from dsenergy.data.folders import check_class_names

    root = Path(values["data_root"])
    train_dir, test_dir = root / "id_train", root / "id_test"
    classes = _class_folders(train_dir, "data_root")
    test_classes = _class_folders(test_dir, "data_root")
    try:
        check_class_names(test_classes, classes, str(test_dir), remedy=(
            f"id_test needs the same class folders as {train_dir}, because its labels index the classes of "
            "id_train. Create the missing class folders with test images and move the extra ones out of "
            "id_test, or add matching class folders to id_train."
        ))
    except ValueError as error:
        raise ParameterError(f"parameter 'data_root': {error}") from error
    remedy = "Add images to it, or remove the class from both id_train and id_test."
    _require_image_files(train_dir, classes, "data_root", remedy)
    _require_image_files(test_dir, classes, "data_root", remedy)

    for split in values.get("covariate_splits", SCHEMA["covariate_splits"].default):
        folder = root / split
        found = _class_folders(folder, "covariate_splits")
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ParameterError(
                f"parameter 'covariate_splits': class folders in {folder} are not ID classes: "
                f"{_shorten(extra)}. A covariate split may have folders for any of the {len(classes)} classes "
                f"of {train_dir} but no others; rename the extra folders to ID class names or move them out "
                f"of {folder}"
            )
        _require_image_files(folder, found, "covariate_splits", f"Add images to it, or move it out of {folder}.")

    if "shots" in values and any(notebook in SCHEMA["shots"].notebooks for notebook in notebooks):
        _check_shots(values["shots"], train_dir, classes)


def _class_folders(folder: Path, name: str) -> list[str]:
    """Return the class folder names in ``folder``; raise a ParameterError on parameter ``name`` if there are none."""
    from dsenergy.data.folders import subfolder_names

    classes = subfolder_names(folder)
    if not classes:
        raise ParameterError(f"parameter {name!r}: folder {folder} contains no class folders; "
                             "benchmark 'folders' reads labelled splits as <split>/<class>/<image files>")
    return classes


def _require_image_files(folder: Path, classes: Iterable[str], name: str, remedy: str) -> None:
    """Raise a ParameterError on parameter ``name`` for the first class folder in ``folder`` without an image file."""
    from dsenergy.data.folders import IMAGE_EXTENSIONS, count_image_files

    for class_name in classes:
        if count_image_files(folder / class_name, limit=1) == 0:
            raise ParameterError(
                f"parameter {name!r}: class folder {folder / class_name} contains no image files (suffixes "
                f"{' '.join(IMAGE_EXTENSIONS)}), but every class folder needs at least one image. {remedy}"
            )


def _check_shots(shots: int, train_dir: Path, classes: list[str]) -> None:
    """Check that every class folder in ``train_dir`` has at least ``shots`` image files for the K-shot draw."""
    from dsenergy.data.folders import count_image_files

    counts = {class_name: count_image_files(train_dir / class_name, limit=shots) for class_name in classes}
    too_small = sorted((count, class_name) for class_name, count in counts.items() if count < shots)
    if not too_small:
        return
    listed = ", ".join(f"{class_name!r}: {count}" for count, class_name in too_small[:_LISTED_NAMES])
    more = ", ..." if len(too_small) > _LISTED_NAMES else ""
    raise ParameterError(
        f"parameter 'shots' is {shots}, but {len(too_small)} of {len(classes)} class folders in {train_dir} "
        f"have fewer image files (smallest first, class: count): {{{listed}{more}}}. K-shot training draws "
        f"{shots} images per class, so set shots to at most {too_small[0][0]} or add images to those classes"
    )


def _shorten(names: list[str]) -> str:
    """Format ``names``, cut to the first few, with their count."""
    more = " ..." if len(names) > _LISTED_NAMES else ""
    return f"{names[:_LISTED_NAMES]}{more} ({len(names)})"


def validate_notebook(notebook: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the parameters of ``notebook`` found in ``namespace`` (a notebook's ``globals()``).

    Returns the converted values, so a notebook run by hand fails early on a bad value, just as
    ``dsenergy run`` does.
    """
    names = [parameter.name for parameter in notebook_parameters(notebook)]
    missing = [name for name in names if name not in namespace]
    if missing:
        raise ParameterError(f"notebook {notebook} lacks parameter {missing[0]!r}; rerun its parameters cell")
    return validate({name: namespace[name] for name in names}, [notebook])


def parameters_cell_source(notebook: str) -> str:
    """Return the source of ``notebook``'s ``parameters`` cell, one commented assignment per parameter."""
    lines = []
    for parameter in notebook_parameters(notebook):
        lines.append(f"{parameter.name} = {parameter.default!r}  # {parameter.help}")
    return "\n".join(lines)
