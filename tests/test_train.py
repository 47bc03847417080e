"""Tests of CoOp / CoOp+EBM prompt tuning on a real random-weight open_clip model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsenergy.train import (
    CHECKPOINT_NAME,
    TrainConfig,
    _parser,
    learning_rate_factor,
    load_prompt_learner,
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
