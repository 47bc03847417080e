"""Tests of CoOp / CoOp+EBM prompt tuning on a real random-weight open_clip model."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsenergy.data._arrays import ArrayImageDataset
from dsenergy.models import load_clip, register_model_config
from dsenergy.train import (
    CHECKPOINT_NAME,
    ResumeError,
    TrainConfig,
    _parser,
    learning_rate_factor,
    load_prompt_learner,
    main,
    save_prompt_learner,
    steps_per_epoch,
    train_prompts,
)
from tests.ddp_worker import CLASS_NAMES, TINY_MODEL_CONFIG, synthetic_features, tiny_bundle

DIM = TINY_MODEL_CONFIG["embed_dim"]
REPO_ROOT = Path(__file__).resolve().parent.parent

# Measured on CPU: 2-process gloo training ends within 1e-7 of one process after 4 steps and within
# 1.1e-6 after 72 steps. The gap is float summation order in the gradient all-reduce and grows with steps.
DDP_ATOL = 1e-6
DDP_ATOL_LONG = 1e-5


def _config(**overrides) -> TrainConfig:
    settings = dict(method="coop_ebm", epochs=2, batch_size=8, n_ctx=4, ebm_weight=1.0, progress=False)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture()
def data():
    return synthetic_features(24, DIM, len(CLASS_NAMES), seed=1)


def test_towers_unchanged_and_only_context_trained(data):
    bundle = tiny_bundle()
    before = {name: parameter.detach().clone() for name, parameter in bundle.model.state_dict().items()}

    result = train_prompts(bundle, CLASS_NAMES, data, _config())

    after = bundle.model.state_dict()
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert all(parameter.grad is None for parameter in bundle.model.parameters())
    assert result.prompt_learner.context_vectors.grad is not None


def test_context_vectors_change(data):
    bundle = tiny_bundle()
    initial = train_prompts(bundle, CLASS_NAMES, data, _config(epochs=0)).prompt_learner.context_vectors.detach().clone()

    trained = train_prompts(bundle, CLASS_NAMES, data, _config()).prompt_learner.context_vectors.detach()

    assert not torch.equal(trained, initial)


def test_zero_ebm_weight_reproduces_coop(data):
    bundle = tiny_bundle()
    coop = train_prompts(bundle, CLASS_NAMES, data, _config(method="coop"))
    zero_weight = train_prompts(bundle, CLASS_NAMES, data, _config(method="coop_ebm", ebm_weight=0.0))

    assert coop.config.ebm_weight == 0.0
    assert coop.history == zero_weight.history
    assert torch.equal(coop.prompt_learner.context_vectors, zero_weight.prompt_learner.context_vectors)


def test_coop_ignores_ebm_weight(data):
    bundle = tiny_bundle()
    plain = train_prompts(bundle, CLASS_NAMES, data, _config(method="coop", ebm_weight=0.0))
    weighted = train_prompts(bundle, CLASS_NAMES, data, _config(method="coop", ebm_weight=5.0))

    assert plain.history == weighted.history
    assert torch.equal(plain.prompt_learner.context_vectors, weighted.prompt_learner.context_vectors)


def test_ebm_weight_changes_training(data):
    bundle = tiny_bundle()
    coop = train_prompts(bundle, CLASS_NAMES, data, _config(method="coop"))
    ebm = train_prompts(bundle, CLASS_NAMES, data, _config(method="coop_ebm", ebm_weight=50.0))

    assert not torch.equal(coop.prompt_learner.context_vectors, ebm.prompt_learner.context_vectors)


def test_same_seed_same_result_other_seed_differs(data):
    bundle = tiny_bundle()
    first = train_prompts(bundle, CLASS_NAMES, data, _config(seed=5))
    again = train_prompts(bundle, CLASS_NAMES, data, _config(seed=5))
    other = train_prompts(bundle, CLASS_NAMES, data, _config(seed=6))

    assert first.history == again.history
    assert torch.equal(first.prompt_learner.context_vectors, again.prompt_learner.context_vectors)
    assert not torch.equal(first.prompt_learner.context_vectors, other.prompt_learner.context_vectors)


def test_history_records_loss_parts(data):
    bundle = tiny_bundle()
    config = _config(ebm_weight=2.0, epochs=3, warmup_epochs=1)

    history = train_prompts(bundle, CLASS_NAMES, data, config).history

    assert [record["epoch"] for record in history] == [1, 2, 3]
    for epoch, record in enumerate(history):
        assert set(record) == {"epoch", "ce", "ebm", "total", "lr", "acc"}
        assert record["total"] == pytest.approx(record["ce"] + 2.0 * record["ebm"], rel=1e-5)
        assert record["lr"] == pytest.approx(config.lr * learning_rate_factor(epoch, config))
        assert 0.0 <= record["acc"] <= 1.0


def test_learning_rate_schedule():
    config = TrainConfig(epochs=5, warmup_epochs=1, lr=0.002, warmup_lr=1e-5)

    factors = [learning_rate_factor(epoch, config) for epoch in range(5)]

    assert factors[0] * config.lr == pytest.approx(1e-5)
    assert factors[1] == pytest.approx(1.0)
    assert factors[3] == pytest.approx(0.5)
    assert factors[1] > factors[2] > factors[3] > factors[4] > 0


def test_text_tower_runs_once_per_step(data):
    bundle = tiny_bundle()
    calls = []
    handle = bundle.model.transformer.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        train_prompts(bundle, CLASS_NAMES, data, _config(epochs=2, batch_size=8))
    finally:
        handle.remove()

    steps_per_epoch = len(data[1]) // 8
    assert len(calls) == 2 * steps_per_epoch
    assert set(calls) == {len(CLASS_NAMES)}


class _Interrupt(Exception):
    pass


def _interrupt_after(epoch_to_stop: int):
    def callback(epoch: int, record: dict) -> None:
        if epoch == epoch_to_stop:
            raise _Interrupt()

    return callback


def test_resume_matches_uninterrupted_run(tmp_path, data):
    bundle = tiny_bundle()
    uninterrupted = train_prompts(bundle, CLASS_NAMES, data, _config(epochs=3, output_dir=str(tmp_path / "full")))

    config = _config(epochs=3, output_dir=str(tmp_path / "killed"))
    with pytest.raises(_Interrupt):
        train_prompts(bundle, CLASS_NAMES, data, config, epoch_callback=_interrupt_after(2))
    saved = torch.load(tmp_path / "killed" / CHECKPOINT_NAME, weights_only=True)
    resumed = train_prompts(bundle, CLASS_NAMES, data, _config(epochs=3, output_dir=str(tmp_path / "killed"), resume=True))

    assert saved["epoch"] == 2
    assert resumed.history == uninterrupted.history
    assert torch.equal(resumed.prompt_learner.context_vectors, uninterrupted.prompt_learner.context_vectors)


def test_checkpoint_written_atomically_each_epoch(tmp_path, data):
    bundle = tiny_bundle()
    epochs_seen = []

    def record_checkpoint(epoch: int, record: dict) -> None:
        epochs_seen.append(torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["epoch"])

    train_prompts(bundle, CLASS_NAMES, data, _config(output_dir=str(tmp_path)), epoch_callback=record_checkpoint)

    assert epochs_seen == [1, 2]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt", "history.json", "prompt_learner.pt"]
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_history_written_each_epoch(tmp_path, data):
    lengths = []

    def record_history(epoch: int, record: dict) -> None:
        lengths.append(len(json.loads((tmp_path / "history.json").read_text())))

    train_prompts(tiny_bundle(), CLASS_NAMES, data, _config(epochs=3, output_dir=str(tmp_path)), epoch_callback=record_history)

    assert lengths == [1, 2, 3]


def test_output_files_follow_umask(tmp_path, data):
    umask = os.umask(0o022)
    try:
        train_prompts(tiny_bundle(), CLASS_NAMES, data, _config(epochs=1, output_dir=str(tmp_path)))
    finally:
        os.umask(umask)

    for name in ("checkpoint.pt", "history.json", "prompt_learner.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("method, epochs", [("zeroshot", 30), ("coop", 0)])
def test_untrained_run_writes_outputs(tmp_path, data, method, epochs):
    bundle = tiny_bundle()

    result = train_prompts(bundle, CLASS_NAMES, data, _config(method=method, epochs=epochs, output_dir=str(tmp_path)))

    assert json.loads((tmp_path / "history.json").read_text()) == []
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    reloaded = load_prompt_learner(tmp_path / "prompt_learner.pt", bundle)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(), result.prompt_learner(), atol=0, rtol=0)


def test_output_dir_that_is_file_raises(tmp_path, data):
    existing = tmp_path / "run"
    existing.write_text("not a folder")
    epochs_run = []

    with pytest.raises(ValueError, match=r"output_dir .*run is an existing file"):
        train_prompts(tiny_bundle(), CLASS_NAMES, data, _config(output_dir=str(existing)),
                      epoch_callback=lambda epoch, record: epochs_run.append(epoch))
    assert epochs_run == []


def test_partial_batch_runs_one_step(data):
    bundle = tiny_bundle()
    features, labels = data
    calls = []
    handle = bundle.model.transformer.register_forward_hook(lambda module, inputs, output: calls.append(1))
    try:
        train_prompts(bundle, CLASS_NAMES, (features[:20], labels[:20]), _config(epochs=1, batch_size=32))
    finally:
        handle.remove()

    assert len(calls) == steps_per_epoch(20, 32)
    assert steps_per_epoch(20, 32) == 1


@pytest.mark.parametrize("samples, batch_size, steps", [(0, 32, 0), (24, 32, 1), (32, 32, 1), (70, 32, 2), (96, 32, 3)])
def test_steps_per_epoch(samples, batch_size, steps):
    assert steps_per_epoch(samples, batch_size) == steps


def test_saved_prompt_learner_reloads(tmp_path, data):
    bundle = tiny_bundle()
    result = train_prompts(bundle, CLASS_NAMES, data, _config(output_dir=str(tmp_path)))

    reloaded = load_prompt_learner(tmp_path / "prompt_learner.pt", bundle)

    with torch.no_grad():
        torch.testing.assert_close(reloaded(), result.prompt_learner(), atol=0, rtol=0)


def test_resume_with_other_settings_raises(tmp_path, data):
    bundle = tiny_bundle()
    train_prompts(bundle, CLASS_NAMES, data, _config(epochs=2, output_dir=str(tmp_path)))

    with pytest.raises(ValueError, match="ebm_weight"):
        train_prompts(bundle, CLASS_NAMES, data, _config(epochs=2, ebm_weight=3.0, output_dir=str(tmp_path), resume=True))


def _interrupted_run(bundle, data, output_dir: Path, **overrides) -> None:
    """Train 3 epochs into output_dir and stop after the second, leaving a checkpoint to resume."""
    config = _config(epochs=3, output_dir=str(output_dir), **overrides)
    with pytest.raises(_Interrupt):
        train_prompts(bundle, CLASS_NAMES, data, config, epoch_callback=_interrupt_after(2))


def test_resume_with_other_data_raises(tmp_path, data):
    bundle = tiny_bundle()
    _interrupted_run(bundle, data, tmp_path)
    features, labels = data

    with pytest.raises(ResumeError, match="other training data"):
        train_prompts(bundle, CLASS_NAMES, (features[:18], labels[:18]), _config(epochs=3, output_dir=str(tmp_path), resume=True))


def test_resume_with_other_weights_raises(tmp_path, data):
    _interrupted_run(tiny_bundle(), data, tmp_path)
    other = tiny_bundle(seed=1)

    with pytest.raises(ResumeError, match=re.escape(f"current model has '{other.weights_id}'")):
        train_prompts(other, CLASS_NAMES, data, _config(epochs=3, output_dir=str(tmp_path), resume=True))


def test_resume_with_other_images_raises(tmp_path):
    generator = np.random.default_rng(0)
    images = ArrayImageDataset(
        generator.integers(0, 255, (20, 40, 40), dtype=np.uint8), np.arange(20) % len(CLASS_NAMES), CLASS_NAMES, "random/20"
    )
    bundle = tiny_bundle()
    _interrupted_run(bundle, torch.utils.data.Subset(images, list(range(12))), tmp_path, input_mode="images")
    shifted = torch.utils.data.Subset(images, list(range(1, 13)))

    with pytest.raises(ResumeError, match="other training data"):
        train_prompts(bundle, CLASS_NAMES, shifted, _config(epochs=3, input_mode="images", output_dir=str(tmp_path), resume=True))


def test_resume_old_checkpoint_warns(tmp_path, data, caplog):
    bundle = tiny_bundle()
    _interrupted_run(bundle, data, tmp_path)
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    del saved["weights_id"], saved["data_fingerprint"]
    torch.save(saved, tmp_path / CHECKPOINT_NAME)
    caplog.set_level(logging.WARNING, logger="dsenergy.train")

    resumed = train_prompts(bundle, CLASS_NAMES, data, _config(epochs=3, output_dir=str(tmp_path), resume=True))

    assert len(resumed.history) == 3
    assert "could not be checked" in caplog.text


def test_resume_corrupt_checkpoint_raises(tmp_path, data):
    (tmp_path / CHECKPOINT_NAME).write_text("not a checkpoint")

    with pytest.raises(ResumeError, match=f"{CHECKPOINT_NAME} cannot be read") as raised:
        train_prompts(tiny_bundle(), CLASS_NAMES, data, _config(output_dir=str(tmp_path), resume=True))
    assert "weights_only" not in str(raised.value)


def test_resume_missing_checkpoint_warns(tmp_path, data, caplog):
    caplog.set_level(logging.WARNING, logger="dsenergy.train")

    train_prompts(tiny_bundle(), CLASS_NAMES, data, _config(epochs=1, output_dir=str(tmp_path), resume=True))

    assert "does not exist; starting from epoch 0" in caplog.text


def test_resume_without_output_dir_raises(data):
    with pytest.raises(ValueError, match="output_dir"):
        train_prompts(tiny_bundle(), CLASS_NAMES, data, _config(resume=True))


def test_zeroshot_returns_phrase_context(data):
    bundle = tiny_bundle()

    result = train_prompts(bundle, CLASS_NAMES, data, _config(method="zeroshot"))

    assert result.history == []
    assert result.prompt_learner.ctx_init == "a photo of a"
    reference = bundle.model.encode_text(bundle.tokenizer([f"a photo of a {name}." for name in CLASS_NAMES]), normalize=True)
    with torch.no_grad():
        torch.testing.assert_close(result.prompt_learner(), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "locoop"}, "method"),
        ({"input_mode": "pixels"}, "input_mode"),
        ({"bound": "upper"}, "bound"),
        ({"batch_size": 0}, "batch_size"),
        ({"ebm_weight": -1.0}, "ebm_weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"lr": "0.01"}, r"lr='0.01' \(expected a number > 0\)"),
        ({"epochs": 2.5}, r"epochs=2.5 \(expected a whole number ≥ 0\)"),
        ({"top_c": True}, "top_c=True"),
        ({"crop_value": float("nan")}, "crop_value=nan"),
        ({"momentum": -0.1}, "momentum=-0.1"),
        ({"ctx_init": ""}, "ctx_init=''"),
        ({"ctx_init": "   "}, "ctx_init='   '"),
    ],
)
def test_invalid_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides).validate()


def test_labels_out_of_range_raise():
    features, labels = synthetic_features(16, DIM, len(CLASS_NAMES))
    with pytest.raises(ValueError, match="labels"):
        train_prompts(tiny_bundle(), CLASS_NAMES[:2], (features, labels), _config())


def test_invalid_config_lists_every_problem():
    with pytest.raises(ValueError) as raised:
        _config(batch_size=0, lr=-1.0).validate()
    assert "batch_size=0" in str(raised.value)
    assert "lr=-1.0" in str(raised.value)


def test_top_c_above_class_count_raises():
    features, labels = synthetic_features(16, DIM, len(CLASS_NAMES))
    with pytest.raises(ValueError, match=f"top_c {len(CLASS_NAMES) + 1} exceeds the number of classes"):
        train_prompts(tiny_bundle(), CLASS_NAMES, (features, labels), _config(top_c=len(CLASS_NAMES) + 1))


def test_fractional_labels_raise():
    features, labels = synthetic_features(16, DIM, len(CLASS_NAMES))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        train_prompts(tiny_bundle(), CLASS_NAMES, (features, labels.float()), _config())


def test_feature_dimension_mismatch_raises():
    features, labels = synthetic_features(16, DIM + 1, len(CLASS_NAMES))
    with pytest.raises(ValueError, match=f"dimension {DIM + 1}, but the model's image embeddings have {DIM}"):
        train_prompts(tiny_bundle(), CLASS_NAMES, (features, labels), _config())


def test_features_mode_rejects_image_dataset():
    with pytest.raises(TypeError, match="features"):
        train_prompts(tiny_bundle(), CLASS_NAMES, [(Image.new("RGB", (32, 32)), 0)], _config())


def test_image_mode_trains_with_augmentation():
    bundle = tiny_bundle()
    before = {name: parameter.detach().clone() for name, parameter in bundle.model.state_dict().items()}
    generator = np.random.default_rng(0)
    images = [
        (Image.fromarray(generator.integers(0, 255, (40, 40, 3), dtype=np.uint8)), index % len(CLASS_NAMES))
        for index in range(16)
    ]

    result = train_prompts(bundle, CLASS_NAMES, images, _config(input_mode="images", epochs=2))

    assert len(result.history) == 2
    for name, value in before.items():
        assert torch.equal(bundle.model.state_dict()[name], value), name


def test_cli_parser_maps_every_config_field():
    args = _parser().parse_args(
        ["--method", "coop", "--epochs", "7", "--ctx-init", "a photo of a", "--class-specific", "--temperature", "0.5"]
    )

    assert args.method == "coop"
    assert args.epochs == 7
    assert args.ctx_init == "a photo of a"
    assert args.class_specific is True
    assert args.temperature == 0.5
    assert args.batch_size == TrainConfig().batch_size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_torchrun(out: Path, *worker_args: str) -> dict:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(REPO_ROOT / "tests" / "ddp_worker.py"), "--out", str(out), *worker_args,
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(out, weights_only=True)


def _single_process(samples: int, epochs: int, batch_size: int):
    torch.set_num_threads(1)
    features, labels = synthetic_features(samples, DIM, len(CLASS_NAMES))
    config = TrainConfig(
        method="coop_ebm", epochs=epochs, batch_size=batch_size, n_ctx=4, ebm_weight=1.0, warmup_epochs=0, progress=False
    )
    return train_prompts(tiny_bundle(), CLASS_NAMES, (features, labels), config)


def _assert_ddp_matches(distributed: dict, single, atol: float = DDP_ATOL) -> None:
    torch.testing.assert_close(distributed["context_vectors"], single.prompt_learner.context_vectors.detach(), atol=atol, rtol=0)
    assert len(distributed["history"]) == len(single.history)
    for ddp_record, record in zip(distributed["history"], single.history):
        for key in ("ce", "ebm", "total", "acc", "lr"):
            assert ddp_record[key] == pytest.approx(record[key], abs=atol), key


def test_torchrun_two_processes_match_single(tmp_path):
    threads = torch.get_num_threads()
    try:
        distributed = _run_torchrun(tmp_path / "ddp.pt", "--samples", "36", "--epochs", "2", "--batch-size", "8")
        single = _single_process(samples=36, epochs=2, batch_size=8)
    finally:
        torch.set_num_threads(threads)

    _assert_ddp_matches(distributed, single)


@pytest.mark.slow
def test_torchrun_two_processes_match_single_longer(tmp_path):
    threads = torch.get_num_threads()
    try:
        distributed = _run_torchrun(tmp_path / "ddp.pt", "--samples", "203", "--epochs", "6", "--batch-size", "16")
        single = _single_process(samples=203, epochs=6, batch_size=16)
    finally:
        torch.set_num_threads(threads)

    _assert_ddp_matches(distributed, single, atol=DDP_ATOL_LONG)


def test_main_trains_on_fashion_open_kshot(tmp_path):
    tiny_bundle()  # registers the tiny architecture with open_clip

    from dsenergy.train import main

    result = main(
        ["--model", "dsenergy-tiny-test", "--shots", "4", "--epochs", "1", "--n-ctx", "4", "--batch-size", "8",
         "--no-progress", "--output-dir", str(tmp_path), "--log-level", "WARNING"]
    )

    assert len(result.history) == 1
    assert result.prompt_learner.context_vectors.shape[0] == 4
    assert (tmp_path / "prompt_learner.pt").is_file()


WIDE_MODEL_NAME = "dsenergy-tiny-wide-test"


def _wide_bundle():
    """Return a random-weight model like the tiny one but with a 48-wide text tower."""
    config = json.loads(json.dumps(TINY_MODEL_CONFIG))
    config["text_cfg"]["width"] = 48
    register_model_config(WIDE_MODEL_NAME, config)
    return load_clip(WIDE_MODEL_NAME, None)


def _saved_learner(tmp_path, data) -> Path:
    train_prompts(tiny_bundle(), CLASS_NAMES, data, _config(epochs=1, output_dir=str(tmp_path)))
    return tmp_path / "prompt_learner.pt"


def test_load_checkpoint_names_prompt_file(tmp_path, data):
    _saved_learner(tmp_path, data)

    with pytest.raises(ValueError, match="training checkpoint.*load .*prompt_learner.pt instead"):
        load_prompt_learner(tmp_path / CHECKPOINT_NAME, tiny_bundle())


def test_load_on_other_width_raises(tmp_path, data):
    path = _saved_learner(tmp_path, data)

    with pytest.raises(ValueError, match="width 32, trained for model weights random-init-seed0.*has width 48"):
        load_prompt_learner(path, _wide_bundle())


def test_load_on_other_weights_raises(tmp_path, data):
    path = _saved_learner(tmp_path, data)

    with pytest.raises(ValueError, match="was trained on model weights random-init-seed0"):
        load_prompt_learner(path, tiny_bundle(seed=1))


def test_load_old_file_warns(tmp_path, data, caplog):
    path = _saved_learner(tmp_path, data)
    payload = torch.load(path, weights_only=True)
    del payload["weights_id"]
    torch.save(payload, path)
    caplog.set_level(logging.WARNING, logger="dsenergy.train")

    learner = load_prompt_learner(path, tiny_bundle(seed=1))

    assert torch.equal(learner.context_vectors.detach(), payload["context_vectors"])
    assert "does not record the model weights" in caplog.text


def test_load_logs_no_random_init(tmp_path, caplog):
    bundle = tiny_bundle()
    learner = train_prompts(bundle, CLASS_NAMES, None, _config(epochs=0, seed=7)).prompt_learner
    save_prompt_learner(learner, tmp_path / "learner.pt", weights_id=bundle.weights_id)
    # Set on the emitting logger itself: a command-line test earlier in the session may have raised
    # the level of the "dsenergy" logger above INFO.
    caplog.set_level(logging.INFO, logger="dsenergy.prompts")
    caplog.clear()  # drop the log of the learner's creation above

    load_prompt_learner(tmp_path / "learner.pt", bundle)

    assert "N(0, 0.02^2)" not in caplog.text
    assert "given values" in caplog.text


def test_main_zeroshot_writes_outputs(tmp_path):
    tiny_bundle()  # registers the tiny architecture with open_clip

    result = main(["--model", "dsenergy-tiny-test", "--method", "zeroshot", "--output-dir", str(tmp_path),
                   "--log-level", "WARNING"])

    assert json.loads((tmp_path / "history.json").read_text()) == []
    assert load_prompt_learner(tmp_path / "prompt_learner.pt", tiny_bundle()).ctx_init == "a photo of a"
    assert result.prompt_learner.ctx_init == "a photo of a"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--epochs", "-1"], "--epochs -1 is invalid"),
        (["--lr", "0"], "--lr 0.0 is invalid"),
        (["--method", "foo"], "argument --method: invalid choice: 'foo'"),
        (["--top-c", "7"], "--top-c 7 exceeds the 6 fashion-open ID classes"),
        (["--resume"], "--resume needs --output-dir"),
        (["--device", "gpu"], "--device 'gpu' is invalid"),
        (["--log-level", "chatty"], "argument --log-level: invalid choice"),
        (["--shots", "-3"], "--shots -3 is invalid"),
        (["--shots", "1000"], "--shots 1000 exceeds the smallest id_train class"),
        (["--ctx-init", ""], "--ctx-init '' is invalid"),
    ],
)
def test_main_rejects_bad_value(arguments, message, capsys):
    with pytest.raises(SystemExit) as raised:
        main(arguments)

    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_main_rejects_file_output_dir(tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")

    with pytest.raises(SystemExit) as raised:
        main(["--output-dir", str(tmp_path / "run")])

    assert raised.value.code == 2
    assert f"--output-dir {tmp_path / 'run'} is an existing file" in capsys.readouterr().err


def test_main_rejects_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_text("not a checkpoint")

    with pytest.raises(SystemExit) as raised:
        main(["--output-dir", str(tmp_path), "--resume"])

    error = capsys.readouterr().err
    assert raised.value.code == 2
    assert f"{tmp_path / CHECKPOINT_NAME} cannot be read" in error
    assert "weights_only" not in error


def test_main_resume_with_other_shots_exits(tmp_path, capsys):
    tiny_bundle()  # registers the tiny architecture with open_clip
    common = ["--model", "dsenergy-tiny-test", "--epochs", "1", "--n-ctx", "4", "--batch-size", "8", "--no-progress",
              "--output-dir", str(tmp_path), "--log-level", "WARNING"]
    main(["--shots", "2", *common])

    with pytest.raises(SystemExit) as raised:
        main(["--shots", "3", "--resume", *common])

    assert raised.value.code == 2
    assert "--resume: checkpoint" in capsys.readouterr().err


def test_help_shows_defaults():
    text = " ".join(_parser().format_help().split())

    assert "0 uses all id_train images (default: 16)" in text
    assert "(default: none, so the context is drawn from N(0, 0.02²) with --seed; --method zeroshot uses 'a photo of a')" in text
    assert "instead of one shared context (default: off)" in text
    assert "show progress bars (default: on)" in text
    assert "the phrase 'a photo of a' unless --ctx-init is given" in text


def test_torchrun_logs_once_per_message(tmp_path):
    from dsenergy.demo import demo_checkpoint_path

    if not demo_checkpoint_path().is_file():
        pytest.skip(f"demo checkpoint {demo_checkpoint_path()} is missing; train it with `python -m dsenergy.demo train`")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "dsenergy.train", "--method", "zeroshot", "--no-progress",
        "--device", "cpu", "--output-dir", str(tmp_path),
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stderr.count("prompt learner: 6 classes") == 1
    assert (tmp_path / "prompt_learner.pt").is_file()
