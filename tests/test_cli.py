"""The ``dsenergy`` command line: help, parameter errors before any notebook runs, the parameter list."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest

from dsenergy.cli import main


def run_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsenergy.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_run_command():
    completed = run_command("--help")
    assert completed.returncode == 0
    assert "run" in completed.stdout
    assert "params" in completed.stdout


def test_run_help_documents_options():
    completed = run_command("run", "--help")
    assert completed.returncode == 0
    for option in ("--params", "--parameter", "--only", "--out", "--smoke", "--keep-going"):
        assert option in completed.stdout


@pytest.mark.skipif(shutil.which("dsenergy") is None, reason="console script not on PATH (package not installed)")
def test_console_script_help():
    completed = subprocess.run(["dsenergy", "run", "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0
    assert "--smoke" in completed.stdout


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        (["-p", "score_names", "[msp, no_such_score]"], "score_names"),
        (["-p", "shots", "many"], "shots"),
        (["-p", "benchmark", "folders", "-p", "data_root", "/no/such/folder"], "data_root"),
        (["-p", "epochs", "2.5"], "epochs"),
        (["-p", "temprature", "0.01"], "temprature"),
        (["-p", "top_c", "9"], "top_c"),
        (["-p", "device", "cuda:99"], "device"),
        (["-p", "output_dir", "elsewhere"], "output_dir"),
    ],
)
def test_bad_parameter_exits_before_running(tmp_path, caplog, arguments, parameter):
    out = tmp_path / "run"
    status = main(["run", "--out", str(out), *arguments])
    assert status == 2
    assert f"'{parameter}'" in caplog.text
    assert not out.exists()


def test_bad_parameters_file(tmp_path, caplog):
    path = tmp_path / "params.yaml"
    path.write_text("n_per_split: -5\n", encoding="utf-8")
    assert main(["run", "--params", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "'n_per_split' must be positive" in caplog.text


def test_unknown_notebook_selection(tmp_path, caplog):
    assert main(["run", "--only", "09", "--out", str(tmp_path / "run")]) == 2
    assert "unknown notebook '09'" in caplog.text


def test_bad_parameter_in_subprocess_names_it(tmp_path):
    completed = run_command("run", "-p", "mask_fraction", "2", "--out", str(tmp_path / "run"))
    assert completed.returncode == 2
    assert "parameter 'mask_fraction' must be in (0, 1)" in completed.stderr


def test_params_command_lists_schema(capsys):
    assert main(["params", "--notebook", "04"]) == 0
    listing = capsys.readouterr().out
    assert "ebm_weights (list[float]" in listing
    assert "smoke [0.0, 1.0]" in listing
    assert "hessian_top_k" not in listing


def test_params_into_closed_pipe():
    # `head -1` closes the pipe after one line, so later writes raise BrokenPipeError in the CLI.
    command = f"{shlex.quote(sys.executable)} -m dsenergy.cli params | head -1"
    completed = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)

    assert completed.returncode == 0
    assert completed.stdout.startswith("model ")
    assert "Traceback" not in completed.stderr


def test_params_unknown_notebook_names_option(caplog):
    assert main(["params", "--notebook", "9"]) == 2
    assert "--notebook names unknown notebook '9'" in caplog.text
    assert "--only" not in caplog.text


def test_params_takes_one_notebook(caplog):
    assert main(["params", "--notebook", "01,02"]) == 2
    assert "--notebook takes one notebook, got '01,02'" in caplog.text


def test_params_marks_output_dir(capsys):
    assert main(["params"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("output_dir "))
    assert "set by `dsenergy run --out`, not -p" in line


@pytest.mark.parametrize(("value", "message"), [
    ("0", "must be a positive number of seconds, got 0"),
    ("-3", "must be a positive number of seconds, got -3"),
    ("1.5", "must be a whole number of seconds, got '1.5'"),
])
def test_cell_timeout_rejects_bad_value(tmp_path, capsys, value, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as raised:
        main(["run", "--cell-timeout", value, "--out", str(out)])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_list_parameter_as_bare_string(tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["run", "-p", "ood_splits", "ood_near", "--out", str(out)]) == 2
    assert '-p ood_splits "[ood_near]"' in caplog.text
    assert not out.exists()


def test_data_root_without_folders_benchmark(tmp_path, caplog):
    out = tmp_path / "run"
    (tmp_path / "bench").mkdir()
    status = main(["run", "--smoke", "--only", "01", "-p", "data_root", str(tmp_path / "bench"), "--out", str(out)])

    assert status == 2
    assert "parameter 'data_root' is set to" in caplog.text
    assert "add -p benchmark folders" in caplog.text
    assert not out.exists()


def test_shots_checked_against_folders(tmp_path, caplog):
    from PIL import Image

    for folder, count in (("id_train/cat", 3), ("id_train/dog", 5), ("id_test/cat", 1), ("id_test/dog", 1),
                          ("ood/textures", 1), ("covariate/sketch/dog", 1)):
        (tmp_path / "bench" / folder).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (4, 4)).save(tmp_path / "bench" / folder / f"{index}.png")
    out = tmp_path / "run"
    status = main(["run", "--only", "04", "-p", "benchmark", "folders", "-p", "data_root", str(tmp_path / "bench"),
                   "-p", "ood_splits", "[ood/textures]", "-p", "covariate_splits", "[covariate/sketch]",
                   "-p", "top_c_values", "[1, 2]", "-p", "shots", "4", "--out", str(out)])

    assert status == 2
    assert "parameter 'shots' is 4, but 1 of 2 class folders" in caplog.text
    assert "{'cat': 3}" in caplog.text
    assert not out.exists()
