"""Runner, records and parameter validation, on small notebooks executed by real papermill kernels."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from dsenergy import params, records
from dsenergy.runner import NotebookExecutionError, find_kernel, load_parameters_file, run_notebooks

RECORDING_CELL = """from dsenergy import records
records.start(NAME, output_dir, {"seed": seed, "n_per_split": n_per_split})
records.record("seed_seen", seed)
records.record("n_per_split_seen", n_per_split, unit="images")
records.record("smoke_seen", smoke)
records.record("table", [{"split": "ood_near", "auroc": 0.75}, {"split": "ood_far", "auroc": 0.5}])"""


def write_notebook(folder: Path, name: str, extra_cells: list[str] = ()) -> Path:
    """Write a small notebook with a parameters cell that declares a few schema parameters."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell("output_dir = 'outputs'\nsmoke = False\nseed = 1\nn_per_split = 1000")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [
        nbformat.v4.new_markdown_cell(f"# {name}"),
        parameters,
        nbformat.v4.new_code_cell(RECORDING_CELL.replace("NAME", repr(name))),
        *(nbformat.v4.new_code_cell(source) for source in extra_cells),
    ]
    path = folder / f"{name}.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run two small notebooks at smoke size once; the tests below read its outputs."""
    source = tmp_path_factory.mktemp("notebooks")
    write_notebook(source, "01_energy_change")
    write_notebook(source, "02_delta_energy_detection")
    out = tmp_path_factory.mktemp("run")
    result = run_notebooks({"seed": 7}, only="01,02", out_dir=out, smoke=True, source_dir=source, progress=False)
    return result, out


def test_runner_writes_notebooks_html_and_records(smoke_run):
    result, out = smoke_run
    assert result.ok
    for name in ("01_energy_change", "02_delta_energy_detection"):
        assert (out / f"{name}.ipynb").is_file()
        assert (out / f"{name}.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
        assert (out / f"{name}.json").is_file()


def test_runner_injects_parameters_in_order(smoke_run):
    result, _ = smoke_run
    recorded = result.records("01_energy_change")
    assert recorded["seed_seen"] == 7  # the caller's value
    assert recorded["n_per_split_seen"] == params.smoke_overrides()["n_per_split"]  # the smoke value
    assert recorded["smoke_seen"] is True


def test_results_json_and_markdown(smoke_run):
    result, out = smoke_run
    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert payload["ok"] is True
    assert payload["smoke"] is True
    assert list(payload["notebooks"]) == ["01_energy_change", "02_delta_energy_detection"]
    entry = payload["notebooks"]["02_delta_energy_detection"]
    assert entry["status"] == "ok"
    assert entry["records"]["seed_seen"]["value"] == 7
    assert payload["parameters"]["model"] == params.SCHEMA["model"].default
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| 01_energy_change | ok |" in markdown
    assert "| seed_seen | 7 |" in markdown
    assert "| ood_near | 0.75 |" in markdown
    assert "(pretrained: None, the committed demo checkpoint;" in markdown


def test_failure_names_notebook_and_cell(tmp_path):
    source = tmp_path / "notebooks"
    source.mkdir()
    write_notebook(source, "01_energy_change", ["x = 1", "raise ValueError('broken on purpose')"])
    write_notebook(source, "02_delta_energy_detection")
    out = tmp_path / "run"

    with pytest.raises(NotebookExecutionError) as caught:
        run_notebooks(only="01,02", out_dir=out, source_dir=source, progress=False, html=False)

    error = caught.value
    assert error.notebook == "01_energy_change"
    # Cells: markdown, parameters, injected parameters, recording, x = 1, the failing cell.
    assert error.cell_index == 5
    # In the committed notebook (no injected cell) the failing cell is the 5th, counted from 1.
    assert "cell 5 of 01_energy_change.ipynb (1-based" in str(error)
    assert "injected-parameters cell not counted" in str(error)
    assert "ValueError: broken on purpose" in str(error)
    assert "(raise ValueError" not in str(error)  # the cell's source is not quoted
    assert (out / "01_energy_change.ipynb").is_file()  # the partial output is kept
    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert payload["ok"] is False
    assert payload["notebooks"]["01_energy_change"]["status"] == "failed"
    assert payload["notebooks"]["01_energy_change"]["error"]["ename"] == "ValueError"
    assert payload["notebooks"]["01_energy_change"]["records"]["seed_seen"]["value"] == 1  # recorded before the failure
    assert payload["notebooks"]["02_delta_energy_detection"]["status"] == "skipped"
    assert payload["notebooks"]["01_energy_change"]["error"]["cell_number"] == 5
    assert "Failed in cell 5 of 01_energy_change.ipynb" in (out / "results.md").read_text(encoding="utf-8")


def test_earlier_run_files_are_named(tmp_path, caplog):
    source = tmp_path / "notebooks"
    source.mkdir()
    write_notebook(source, "01_energy_change")
    write_notebook(source, "02_delta_energy_detection")
    out = tmp_path / "run"
    run_notebooks(only="01,02", out_dir=out, source_dir=source, progress=False)
    caplog.clear()

    result = run_notebooks(only="01", out_dir=out, source_dir=source, progress=False, html=False)

    # Notebook 02's files and 01's HTML export (HTML is off now) are left from the first run.
    earlier = ["01_energy_change.html", "02_delta_energy_detection.ipynb", "02_delta_energy_detection.html",
               "02_delta_energy_detection.json"]
    assert [path.name for path in result.earlier_files] == earlier
    warnings = [record.getMessage() for record in caplog.records
                if record.levelname == "WARNING" and "earlier run" in record.getMessage()]
    assert len(warnings) == 1
    for name in earlier:
        assert name in warnings[0]
    assert "01_energy_change.json" not in warnings[0]
    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert payload["earlier_run_files"] == earlier
    assert list(payload["notebooks"]) == ["01_energy_change"]
    markdown = (out / "results.md").read_text(encoding="utf-8")
    note = "Left from an earlier run, whose parameters may differ, and not part of these results: "
    assert note + "`01_energy_change.html`, `02_delta_energy_detection.ipynb`" in markdown


def test_fresh_folder_has_no_earlier_files(smoke_run):
    result, out = smoke_run
    assert result.earlier_files == []
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["earlier_run_files"] == []
    assert "earlier run" not in (out / "results.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("timeout", [0, -5, 2.5, True])
def test_cell_timeout_must_be_positive(tmp_path, timeout):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=f"cell_timeout must be a positive number of seconds.*got {timeout!r}"):
        run_notebooks(out_dir=out, cell_timeout=timeout, progress=False)
    assert not out.exists()


def test_output_dir_parameter_is_rejected(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(params.ParameterError, match="'output_dir'.*use --out"):
        run_notebooks({"output_dir": str(tmp_path / "elsewhere")}, out_dir=out, progress=False)
    assert not out.exists()


def test_bad_parameter_stops_before_any_notebook(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(params.ParameterError, match="score_names"):
        run_notebooks({"score_names": ["msp", "no_such_score"]}, out_dir=out, progress=False)
    assert not out.exists()


def test_find_kernel_runs_this_python():
    from jupyter_client.kernelspec import KernelSpecManager

    name = find_kernel()
    argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
    assert argv0 in {"python", "python3"} or Path(argv0).resolve() == Path(sys.executable).resolve()


def test_find_kernel_rejects_unknown_name():
    with pytest.raises(ValueError, match="no-such-kernel"):
        find_kernel("no-such-kernel")


def test_parameters_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seeds: [1, 2]\nmodel: ViT-B-32\npretrained: openai\n", encoding="utf-8")
    assert load_parameters_file(path) == {"seeds": [1, 2], "model": "ViT-B-32", "pretrained": "openai"}
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(params.ParameterError, match="mapping"):
        load_parameters_file(path)


# --- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"shot": 4}, "unknown parameter 'shot'; did you mean 'shots'"),
        ({"shots": "4"}, "parameter 'shots' must be an integer"),
        ({"shots": True}, "parameter 'shots' must be an integer"),
        ({"shots": 0}, "parameter 'shots' must be positive"),
        ({"score_names": ["msp", "nope"]}, "unknown score 'nope'"),
        ({"mask_fraction": 1.5}, "parameter 'mask_fraction' must be in \\(0, 1\\)"),
        ({"device": "tpu"}, "parameter 'device' must be one of"),
        ({"bound": "upper"}, "parameter 'bound' must be one of"),
        ({"seeds": []}, "parameter 'seeds' must not be empty"),
        ({"data_root": "/no/such/folder"}, "parameter 'data_root': path '/no/such/folder' does not exist"),
        ({"benchmark": "folders"}, "parameter 'data_root' is required"),
        ({"covariate_splits": ["covariate/fog/2"]}, "fashion-open has no split 'covariate/fog/2'"),
        ({"ood_splits": ["id_test"]}, "must start with 'ood'"),
        ({"model": None}, "parameter 'model' must be a str"),
        ({"model": "ViT-B-32x"}, "parameter 'model': model 'ViT-B-32x' is not an open_clip architecture \\(close names: ViT-B-32"),
        ({"pretrained": "/no/such/weights.pt"}, "parameter 'pretrained': pretrained '/no/such/weights.pt' is neither"),
        ({"model": "ViT-B-32", "pretrained": "opena"}, "tags: openai, "),
        ({"model": "ViT-B-32"}, "parameter 'pretrained': pretrained is null, which would give model 'ViT-B-32' random weights"),
    ],
)
def test_validate_names_bad_parameter(values, message):
    with pytest.raises(params.ParameterError, match=message):
        params.validate(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"top_c": 9}, "parameter 'top_c' is 9, but fashion-open has 6 ID classes"),
        ({"top_c_values": [1, 7]}, "parameter 'top_c_values' is \\[1, 7\\], but fashion-open has 6 ID classes"),
    ],
)
def test_validate_top_c_against_class_count(values, message):
    from dsenergy.data import FASHION_ID_CLASSES

    assert len(FASHION_ID_CLASSES) == 6
    with pytest.raises(params.ParameterError, match=message):
        params.validate(values)
    name = next(iter(values))
    at_limit = len(FASHION_ID_CLASSES) if name == "top_c" else [len(FASHION_ID_CLASSES)]
    assert params.validate({name: at_limit})[name] == at_limit


def write_layout(root: Path, counts: dict[str, int]) -> Path:
    """Write ``count`` small PNG images into each folder of ``counts`` (a path relative to ``root``)."""
    from PIL import Image

    for folder, count in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.new("RGB", (4, 4), (index, 0, 0)).save(root / folder / f"{index}.png")
    return root


#: A small benchmark-'folders' layout: two ID classes with 3 training images each.
LAYOUT = {"id_train/cat": 3, "id_train/dog": 3, "id_test/cat": 1, "id_test/dog": 1,
          "ood/textures": 1, "covariate/sketch/cat": 1}


def folder_values(root: Path, **overrides) -> dict:
    """Return parameters that select benchmark 'folders' on ``root`` with its ood/textures and covariate/sketch."""
    return {"benchmark": "folders", "data_root": str(root), "ood_splits": ["ood/textures"],
            "covariate_splits": ["covariate/sketch"], **overrides}


def test_validate_top_c_against_class_folders(tmp_path):
    write_layout(tmp_path, {**LAYOUT, "covariate/sketch/dog": 1})
    (tmp_path / "id_test" / ".hidden").mkdir()
    values = folder_values(tmp_path, top_c_values=[1, 2], shots=1)
    assert params.validate({**values, "top_c": 2})["top_c"] == 2
    with pytest.raises(params.ParameterError, match="parameter 'top_c' is 3, but .*id_test has 2 ID classes"):
        params.validate({**values, "top_c": 3})
    # The runner also checks the defaults of the selected notebooks: 04's top_c_values [1, 2, 3].
    del values["top_c_values"]
    out = tmp_path / "run"
    with pytest.raises(params.ParameterError, match="parameter 'top_c_values' is \\[1, 2, 3\\]"):
        run_notebooks(values, only="04", out_dir=out, progress=False)
    assert not out.exists()


def test_validate_device_availability():
    with pytest.raises(params.ParameterError, match="parameter 'device' is 'cuda:99'.*'auto'"):
        params.validate({"device": "cuda:99"})
    if torch.cuda.is_available():
        assert params.validate({"device": "cuda"})["device"] == "cuda"
    else:
        with pytest.raises(params.ParameterError, match="parameter 'device' is 'cuda', but CUDA is not available"):
            params.validate({"device": "cuda"})
    if torch.backends.mps.is_available():
        assert params.validate({"device": "mps"})["device"] == "mps"
    else:
        with pytest.raises(params.ParameterError, match="MPS is not available.*use 'auto' or 'cpu'"):
            params.validate({"device": "mps"})
    assert params.validate({"device": "cpu"})["device"] == "cpu"


def test_validate_accepts_existing_weights_sources(tmp_path):
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"not inspected before loading")

    assert params.validate({"model": "ViT-B-32", "pretrained": "openai"})["pretrained"] == "openai"
    assert params.validate({"pretrained": str(checkpoint)})["pretrained"] == str(checkpoint)
    assert params.validate({"model": "hf-hub:someone/some-clip"})["model"] == "hf-hub:someone/some-clip"


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    (tmp_path / "weights.pt").write_bytes(b"not inspected before loading")
    write_layout(tmp_path / "images", LAYOUT)
    monkeypatch.chdir(tmp_path)

    values = params.validate({**folder_values(Path("images")), "pretrained": "weights.pt"}, warn_unused=False)

    assert values["pretrained"] == str(tmp_path.resolve() / "weights.pt")
    assert values["data_root"] == str(tmp_path.resolve() / "images")


def test_output_folder_that_is_a_file_is_rejected(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me", encoding="utf-8")

    with pytest.raises(ValueError, match="is an existing file; choose a folder path"):
        run_notebooks({}, out_dir=target, smoke=True)
    assert target.read_text(encoding="utf-8") == "keep me"


def test_validate_converts_values():
    converted = params.validate({"temperature": 1, "pretrained": None, "seeds": [3]})
    assert converted == {"temperature": 1.0, "pretrained": None, "seeds": [3]}
    assert isinstance(converted["temperature"], float)


def test_validate_folders_layout(tmp_path):
    write_layout(tmp_path, LAYOUT)
    values = folder_values(tmp_path)
    assert params.validate(values)["data_root"] == str(tmp_path)
    with pytest.raises(params.ParameterError, match="covariate/missing"):
        params.validate({**values, "covariate_splits": ["covariate/missing"]})


def test_data_root_needs_folders_benchmark(tmp_path):
    for benchmark in ({}, {"benchmark": "fashion-open"}):
        with pytest.raises(params.ParameterError) as error:
            params.validate({"data_root": str(tmp_path), **benchmark})
        message = str(error.value)
        assert f"parameter 'data_root' is set to {str(tmp_path)!r}" in message
        assert "add -p benchmark folders" in message
        assert "or drop data_root" in message


@pytest.mark.parametrize(
    ("name", "split", "hinted"),
    [
        ("ood_splits", "ood/textures", True),
        ("ood_splits", "ood_textures/", True),
        ("ood_splits", "ood\\textures", True),
        ("covariate_splits", "covariate/sketch", True),
        ("covariate_splits", "covariate/sketch/photos/2", True),
        ("covariate_splits", "covariate/fog/2", False),
        ("ood_splits", "ood_nearby", False),
    ],
)
def test_fashion_open_split_folder_hint(name, split, hinted):
    with pytest.raises(params.ParameterError) as error:
        params.validate({name: [split]})
    message = str(error.value)

    assert f"fashion-open has no split {split!r}" in message
    assert ("add -p benchmark folders -p data_root DIR" in message) == hinted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id_test/fox": 1},
         r"parameter 'data_root': class folders in .*id_test do not match the expected classes: extra \['fox'\] "
         r"\(1\)\. id_test needs the same class folders as .*id_train"),
        ({"id_train/fox": 3},
         r"class folders in .*id_test do not match the expected classes: missing \['fox'\] \(1\)"),
        ({"covariate/sketch/wolf": 1, "covariate/sketch/fox": 1},
         r"parameter 'covariate_splits': class folders in .*covariate/sketch are not ID classes: "
         r"\['fox', 'wolf'\] \(2\)\. A covariate split may have folders for any of the 2 classes"),
        ({"id_train/owl": 3, "id_test/owl": 0},
         r"parameter 'data_root': class folder .*id_test/owl contains no image files .* remove the class from both"),
        ({"covariate/sketch/dog": 0},
         r"parameter 'covariate_splits': class folder .*covariate/sketch/dog contains no image files"),
    ],
)
def test_validate_folders_class_problems(tmp_path, change, message):
    write_layout(tmp_path, {**LAYOUT, **change})

    with pytest.raises(params.ParameterError, match=message):
        params.validate(folder_values(tmp_path))


@pytest.mark.parametrize("split", ["id_train", "id_test", "covariate/sketch"])
def test_validate_folders_without_class_folders(tmp_path, split):
    write_layout(tmp_path, LAYOUT)
    for folder in (tmp_path / split).iterdir():
        folder.rename(tmp_path / f"moved-{folder.name}")
    name = "covariate_splits" if split.startswith("covariate") else "data_root"

    with pytest.raises(params.ParameterError, match=f"parameter '{name}': folder .*{split} contains no class folders"):
        params.validate(folder_values(tmp_path))


def test_validate_covariate_class_subset(tmp_path):
    write_layout(tmp_path, LAYOUT)
    assert sorted(p.name for p in (tmp_path / "covariate" / "sketch").iterdir()) == ["cat"]
    assert params.validate(folder_values(tmp_path))["covariate_splits"] == ["covariate/sketch"]


def test_validate_shots_against_class_folders(tmp_path):
    write_layout(tmp_path, {**LAYOUT, "id_train/ant": 2, "id_test/ant": 1, "id_train/bee": 5, "id_test/bee": 1})
    (tmp_path / "id_train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "id_train" / "cat" / ".hidden.png").write_bytes(b"hidden file")
    values = folder_values(tmp_path)

    assert params.validate({**values, "shots": 2})["shots"] == 2
    with pytest.raises(params.ParameterError) as error:
        params.validate({**values, "shots": 4})
    message = str(error.value)
    assert "parameter 'shots' is 4, but 3 of 4 class folders in" in message
    assert "{'ant': 2, 'cat': 3, 'dog': 3}" in message
    assert "set shots to at most 2" in message


def test_validate_shots_only_where_used(tmp_path):
    write_layout(tmp_path, LAYOUT)
    values = folder_values(tmp_path, shots=50)

    assert params.validate(values, ["01_energy_change"], warn_unused=False)["shots"] == 50
    with pytest.raises(params.ParameterError, match="parameter 'shots' is 50"):
        params.validate(values, ["04_finetune"])


def test_validate_notebook_checks_folders(tmp_path):
    write_layout(tmp_path, LAYOUT)
    namespace = {**params.defaults("04_finetune"), **folder_values(tmp_path, top_c_values=[1, 2])}

    with pytest.raises(params.ParameterError, match="parameter 'shots' is 16, but 2 of 2 class folders"):
        params.validate_notebook("04_finetune", namespace)
    namespace["shots"] = 3
    assert params.validate_notebook("04_finetune", namespace)["shots"] == 3


def test_runner_checks_folders_first(tmp_path):
    write_layout(tmp_path / "data", {**LAYOUT, "id_test/fox": 1})
    out = tmp_path / "run"

    with pytest.raises(params.ParameterError, match=r"extra \['fox'\]"):
        run_notebooks(folder_values(tmp_path / "data"), only="01", out_dir=out, progress=False)
    assert not out.exists()


def test_runner_checks_shots_default(tmp_path):
    write_layout(tmp_path / "data", LAYOUT)
    out = tmp_path / "run"

    with pytest.raises(params.ParameterError, match="parameter 'shots' is 16"):
        run_notebooks(folder_values(tmp_path / "data"), only="04", out_dir=out, progress=False)
    assert not out.exists()


def test_cli_values_parse_as_yaml():
    assert params.parse_cli_value("3") == 3
    assert params.parse_cli_value("0.5") == 0.5
    assert params.parse_cli_value("[1, 2]") == [1, 2]
    assert params.parse_cli_value("null") is None
    assert params.parse_cli_value("ViT-B-32") == "ViT-B-32"


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("ood_splits", "ood_near", '[ood_near] in a parameters file, -p ood_splits "[ood_near]"'),
        ("ood_splits", "ood_near, ood_far", "[ood_near, ood_far] in a parameters file"),
        ("seeds", 3, '-p seeds "[3]"'),
        ("ebm_weights", 0.5, "[0.5] in a parameters file"),
        ("score_names", {"msp": 1}, "write it as a YAML list such as [a, b]"),
    ],
)
def test_list_parameter_error_shows_list(name, value, hint):
    with pytest.raises(params.ParameterError, match=f"parameter '{name}' must be a list of") as caught:
        params.validate({name: value})
    assert hint in str(caught.value)


def test_resolve_notebooks():
    assert params.resolve_notebooks("03,1") == ["01_energy_change", "03_hessian_consistency"]
    assert params.resolve_notebooks(["05_evaluation.ipynb"]) == ["05_evaluation"]
    assert params.resolve_notebooks(None) == list(params.NOTEBOOKS)
    with pytest.raises(params.ParameterError, match="07"):
        params.resolve_notebooks("07")


def test_resolve_notebooks_names_option():
    with pytest.raises(params.ParameterError, match="^--notebook names unknown notebook '9'"):
        params.resolve_notebooks("9", option="--notebook")
    with pytest.raises(params.ParameterError, match="^--only selects no notebook"):
        params.resolve_notebooks(",")


def test_every_smoke_value_is_valid():
    assert params.validate(params.smoke_overrides(), warn_unused=False)
    assert params.validate(params.defaults(), warn_unused=False)


# --- records ---------------------------------------------------------------------------------


def test_records_round_trip(tmp_path):
    path = records.start("01_energy_change", tmp_path, {"seed": np.int64(3)})
    records.record("auroc", np.float32(0.75), unit="AUROC", description="test value")
    records.record("tensor", torch.tensor([1.0, 2.0]))
    records.record("frame", pd.DataFrame({"split": ["a", "b"], "value": [1.0, float("nan")]}))
    records.record("auroc", 0.8)  # a later value replaces the earlier one

    payload = records.load_records(path)
    assert payload["parameters"] == {"seed": 3}
    assert records.record_value(payload, "auroc") == 0.8
    assert records.record_value(payload, "tensor") == [1.0, 2.0]
    assert records.record_value(payload, "frame") == [{"split": "a", "value": 1.0}, {"split": "b", "value": None}]
    assert payload["records"]["tensor"].get("unit") is None
    with pytest.raises(KeyError, match="recorded no 'missing'"):
        records.record_value(payload, "missing")


def test_records_file_has_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        path = records.start("01_energy_change", tmp_path)
        records.record("value", 1.0)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_record_rejects_unknown_type(tmp_path):
    records.start("01_energy_change", tmp_path)
    with pytest.raises(TypeError, match="cannot record a value of type object"):
        records.record("bad", object())


def test_json_conversion_of_special_floats():
    assert records.to_json({"a": math.inf, "b": [np.float64("nan"), 1]}) == {"a": None, "b": [None, 1]}


def test_find_kernel_writes_private_spec(tmp_path, monkeypatch):
    # Mock: a python3 kernel spec of another environment cannot be installed here, so the lookup
    # is made to find none, which takes the same fallback path.
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def no_kernel(self, name):
        raise NoSuchKernel(name)

    monkeypatch.setenv("JUPYTER_PATH", "")  # restored after the test
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", no_kernel)
    assert find_kernel(spec_dir=tmp_path) == "dsenergy-python"
    spec = json.loads((tmp_path / "kernels" / "dsenergy-python" / "kernel.json").read_text(encoding="utf-8"))
    assert spec["argv"][0] == sys.executable
    assert str(tmp_path) in os.environ["JUPYTER_PATH"]


def test_markdown_tables_escape_pipes():
    from dsenergy.runner import _markdown_table

    lines = _markdown_table([{"gap": "|AUROC(ΔE) - AUROC(MSP)|", "split": "ood_near"}])

    assert lines[2] == "| \\|AUROC(ΔE) - AUROC(MSP)\\| | ood_near |"
    unescaped = [line.replace("\\|", "").count("|") for line in lines]
    assert len(set(unescaped)) == 1


def test_timed_out_cell_is_located(tmp_path):
    import papermill
    from nbclient.exceptions import CellTimeoutError

    from dsenergy.runner import _last_started_cell

    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
    notebook.cells = [nbformat.v4.new_markdown_cell("# slow"), nbformat.v4.new_code_cell("x = 1"),
                      nbformat.v4.new_code_cell("import time\ntime.sleep(60)"), nbformat.v4.new_code_cell("y = 2")]
    source, output = tmp_path / "slow.ipynb", tmp_path / "slow_out.ipynb"
    nbformat.write(notebook, str(source))
    kernel = find_kernel(None, spec_dir=tmp_path / ".jupyter")

    with pytest.raises(CellTimeoutError):
        papermill.execute_notebook(str(source), str(output), kernel_name=kernel, execution_timeout=1, progress_bar=False)
    index, execution_count, cell_source = _last_started_cell(output)

    assert index == 2
    assert execution_count == 2
    assert "time.sleep(60)" in cell_source


def test_unstarted_notebook_has_no_failing_cell(tmp_path):
    from dsenergy.runner import _last_started_cell

    assert _last_started_cell(tmp_path / "missing.ipynb") == (None, None, "")
