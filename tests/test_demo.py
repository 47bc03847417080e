"""Tests of the demo model: config, committed checkpoint, training code and zero-shot accuracy."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dsenergy import demo
from dsenergy.demo import (
    DEMO_MODEL_CONFIG,
    DEMO_MODEL_NAME,
    DEMO_TEMPLATES,
    DemoTrainConfig,
    class_caption_contrastive_loss,
    create_demo_model,
    demo_checkpoint_path,
    preprocess_to_uint8,
    register_demo_config,
    save_demo_checkpoint,
    train_demo_model,
)

IMAGE_SIZE = DEMO_MODEL_CONFIG["vision_cfg"]["image_size"]


def test_config_registers_and_builds():
    register_demo_config()
    register_demo_config()

    assert DEMO_MODEL_NAME in open_clip.list_models()
    assert open_clip.get_model_config(DEMO_MODEL_NAME) == DEMO_MODEL_CONFIG

    model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(DEMO_MODEL_NAME)
    images = torch.stack([preprocess(Image.new("RGB", (28, 28), color)) for color in ("black", "white")])
    tokens = tokenizer(["a photo of a bag.", "a photo of a dress."])

    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert tokens.shape == (2, DEMO_MODEL_CONFIG["text_cfg"]["context_length"])
    with torch.no_grad():
        assert model.encode_image(images).shape == (2, DEMO_MODEL_CONFIG["embed_dim"])
        assert model.encode_text(tokens).shape == (2, DEMO_MODEL_CONFIG["embed_dim"])


def test_templates_have_one_placeholder():
    assert len(set(DEMO_TEMPLATES)) == len(DEMO_TEMPLATES)
    for template in DEMO_TEMPLATES:
        assert template.count("{}") == 1, template


def test_preprocess_uint8_matches_pil_path():
    register_demo_config()
    model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL_NAME)
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)

    gray = preprocess_to_uint8(images, preprocess, mean[0], std[0])
    pil_batch = torch.stack([preprocess(Image.fromarray(image)) for image in images])
    tensor_batch = demo._normalize_batch(gray, mean, std)

    assert gray.dtype == torch.uint8
    assert gray.shape == (5, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(tensor_batch, pil_batch, atol=1e-5, rtol=0)


def test_loss_ignores_same_class_pairs():
    # Each image equals its class caption, so at scale 100 the image→text term is near zero. Each caption has two
    # positive images with equal logits, so its caption→image term is exactly log 2.
    text_features = F.normalize(torch.eye(3, 8), dim=-1)
    image_features = text_features.repeat_interleave(2, dim=0)
    image_labels = torch.tensor([0, 0, 1, 1, 2, 2])
    text_labels = torch.tensor([0, 1, 2])

    loss = class_caption_contrastive_loss(image_features, text_features, image_labels, text_labels, torch.tensor(100.0))

    assert loss.item() == pytest.approx(0.5 * math.log(2), abs=1e-4)


def test_loss_rejects_missing_caption_class():
    features = F.normalize(torch.randn(2, 8), dim=-1)
    with pytest.raises(ValueError, match="no caption"):
        class_caption_contrastive_loss(features, features[:1], torch.tensor([0, 1]), torch.tensor([0]), torch.tensor(10.0))


def test_one_training_step_changes_weights():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.arange(12) % 3
    config = DemoTrainConfig(epochs=1, batch_size=6, seed=3, threads=1)

    initial = create_demo_model(seed=config.seed).state_dict()
    threads_before = torch.get_num_threads()
    model, losses = train_demo_model(images, labels, ["bag", "dress", "sandal"], config, max_steps=1)
    trained = model.state_dict()

    assert len(losses) == 1
    assert math.isfinite(losses[0])
    assert not model.training
    assert torch.get_num_threads() == threads_before
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.equal(trained["visual.conv1.weight"], initial["visual.conv1.weight"])
    assert not torch.equal(trained["token_embedding.weight"], initial["token_embedding.weight"])


def test_training_is_reproducible():
    images = torch.randint(0, 256, (8, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 2
    config = DemoTrainConfig(epochs=1, batch_size=4, seed=7, threads=1)

    first, first_losses = train_demo_model(images, labels, ["bag", "dress"], config, max_steps=2)
    second, second_losses = train_demo_model(images, labels, ["bag", "dress"], config, max_steps=2)

    assert first_losses == second_losses
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name


def test_training_rejects_wrong_image_size():
    images = torch.zeros(4, IMAGE_SIZE + 4, IMAGE_SIZE + 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="image size"):
        train_demo_model(images, torch.zeros(4, dtype=torch.int64), ["bag"], DemoTrainConfig(threads=1), max_steps=1)


def _write_idx(path, array: np.ndarray) -> None:
    type_code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def _write_tiny_fashion_mnist(folder) -> None:
    """Write a Fashion-MNIST folder of 20 training and 12 test images (labels cycle through 0–9)."""
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 20), ("t10k", 12)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(count) % 10).astype(np.uint8))


def test_train_command_writes_checkpoint(tmp_path):
    # A tiny Fashion-MNIST folder written here replaces the Debian files, which a machine may lack.
    _write_tiny_fashion_mnist(tmp_path)
    out = tmp_path / "models" / "demo.pt"

    demo.main(["train", "--epochs", "1", "--seed", "1", "--source", str(tmp_path), "--out", str(out),
               "--batch-size", "10", "--threads", "1"])

    record = json.loads((tmp_path / "models" / "demo.training.json").read_text())
    assert out.is_file()
    assert record["seed"] == 1
    assert record["train_images"] == 20
    assert len(record["epoch_losses"]) == 1
    assert record["sha256"] == demo._sha256(out)
    assert 0.0 <= record["id_test_accuracy_tensor_path"] <= 1.0


def test_train_command_on_id_classes_only(tmp_path):
    from dsenergy.data.fashion_open import FASHION_ID_CLASSES

    _write_tiny_fashion_mnist(tmp_path)
    out = tmp_path / "id-only.pt"

    demo.main(["train", "--classes", "id", "--epochs", "1", "--source", str(tmp_path), "--out", str(out),
               "--batch-size", "10", "--threads", "1"])

    record = json.loads((tmp_path / "id-only.training.json").read_text())
    # Labels 0–9 twice; the six ID classes are Fashion-MNIST labels 0, 1, 3, 5, 7 and 8.
    assert record["train_images"] == 12
    assert record["train_classes"] == list(FASHION_ID_CLASSES)


def test_train_on_id_classes_needs_out(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        demo.main(["train", "--classes", "id", "--source", str(tmp_path)])

    assert raised.value.code == 2
    assert "pass --out PATH" in capsys.readouterr().err


def test_train_protects_committed_checkpoint(tmp_path, monkeypatch, capsys):
    source = tmp_path / "fashion-mnist"
    source.mkdir()
    _write_tiny_fashion_mnist(source)
    monkeypatch.setenv("DSENERGY_DATA_DIR", str(tmp_path))
    committed = tmp_path / "models" / "dsenergy-demo.pt"
    committed.parent.mkdir()
    committed.write_bytes(b"committed weights")
    options = ["--epochs", "1", "--source", str(source), "--batch-size", "10", "--threads", "1"]

    with pytest.raises(SystemExit):
        demo.main(["train", *options])
    assert "--replace-committed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["train", *options, "--out", str(committed.with_name("beside.pt"))])
    assert "train other checkpoints elsewhere" in capsys.readouterr().err
    assert committed.read_bytes() == b"committed weights"

    demo.main(["train", *options, "--replace-committed"])
    assert committed.read_bytes() != b"committed weights"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--epochs", "0", "--out", "x.pt"], "--epochs: must be a positive integer, got 0"),
        (["train", "--threads", "-1", "--out", "x.pt"], "--threads: must be a positive integer, got -1"),
        (["train", "--out", "x.pt", "--source", "no-such-folder"], "pass --source DIR"),
        (["evaluate", "--checkpoint", "no-such-file.pt"], "pass --checkpoint PATH"),
        (["train", "--out", "."], "must name a .pt file"),
        (["evaluate", "--checkpoint", "corrupt.pt"], "could not be read"),
    ],
)
def test_command_line_rejects_bad_values(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")

    with pytest.raises(SystemExit) as raised:
        demo.main(arguments)

    assert message in str(raised.value.code) + capsys.readouterr().err


def test_select_classes_relabels_by_kept_order():
    images = np.arange(6).reshape(6, 1, 1)
    labels = np.array([0, 1, 2, 3, 2, 0])

    kept_images, kept_labels = demo._select_classes(images, labels, ["a", "b", "c", "d"], ["c", "a"])

    assert kept_images.ravel().tolist() == [0, 2, 4, 5]
    assert kept_labels.tolist() == [1, 0, 0, 1]
    with pytest.raises(ValueError, match="'z'"):
        demo._select_classes(images, labels, ["a", "b", "c", "d"], ["z"])


def test_model_card_states_training_classes(tmp_path):
    from dsenergy.data.fashion_open import FASHION_ID_CLASSES

    training, evaluation = _committed_record("training"), _committed_record("evaluation")
    all_classes, id_only = tmp_path / "all.md", tmp_path / "id.md"

    demo.write_model_card(training, evaluation, all_classes)
    demo.write_model_card({**training, "train_classes": list(FASHION_ID_CLASSES)}, evaluation, id_only)

    assert "of all ten classes" in all_classes.read_text(encoding="utf-8")
    assert "has seen\n  every concept" in all_classes.read_text(encoding="utf-8")
    assert "of 6 classes (t-shirt/top, trouser" in id_only.read_text(encoding="utf-8")
    assert "never seen an image or a caption" in id_only.read_text(encoding="utf-8")


def test_model_card_lists_mean_top_cosine(tmp_path):
    training, evaluation = _committed_record("training"), _committed_record("evaluation")
    card = tmp_path / "card.md"

    demo.write_model_card(training, {**evaluation, "mean_max_cosine": {"id_test": 0.74, "ood_near": 0.38}}, card)

    assert "prompts: ID 0.740; near (pullover, coat, shirt, ankle boot) 0.380." in card.read_text(encoding="utf-8")


def test_template_cosine_on_demo_model():
    from dsenergy.models import load_clip

    bundle = load_clip(DEMO_MODEL_NAME)

    repeated = demo._template_cosine(bundle, ["bag", "sandal"], ["a photo of a {}.", "a photo of a {}."])
    varied = demo._template_cosine(bundle, ["bag", "sandal"], list(DEMO_TEMPLATES[:4]))

    assert repeated["mean"] == pytest.approx(1.0, abs=1e-5)
    assert varied["min"] >= -1.0
    assert varied["min"] <= varied["mean"]
    assert varied["mean"] <= 1.0 + 1e-6


def test_model_card_states_template_cosine(tmp_path):
    training, evaluation = _committed_record("training"), _committed_record("evaluation")
    card = tmp_path / "card.md"

    demo.write_model_card(training, {**evaluation, "template_cosine": {"mean": 0.99991, "min": 0.9982}}, card)

    assert "is 0.9999 on average\n  (smallest 0.9982)" in card.read_text(encoding="utf-8")


def test_saved_checkpoint_round_trips(tmp_path):
    model = create_demo_model(seed=5)
    path = tmp_path / "demo.pt"
    save_demo_checkpoint(model, path)

    loaded = open_clip.create_model(DEMO_MODEL_NAME, pretrained=str(path))

    for name, parameter in loaded.named_parameters():
        assert parameter.dtype == torch.float32, name
        torch.testing.assert_close(parameter, model.state_dict()[name].half().float(), atol=0, rtol=0)


def test_committed_checkpoint_loads():
    path = demo_checkpoint_path()
    assert path.is_file(), f"{path} is missing; train it with `python -m dsenergy.demo train`"
    assert path.stat().st_size <= 30 * 1024 * 1024

    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    expected_keys = set(create_demo_model().state_dict())
    assert set(state_dict) == expected_keys

    model = open_clip.create_model(DEMO_MODEL_NAME, pretrained=str(path))
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert 1.0 < model.logit_scale.exp().item() <= 100.0


def test_committed_model_zero_shot_accuracy():
    from dsenergy.data.fashion_open import FASHION_ID_CLASSES, load_fashion_open
    from dsenergy.features import extract_features_and_labels
    from dsenergy.metrics import accuracy
    from dsenergy.models import build_zero_shot_classifier, load_clip

    bundle = load_clip(DEMO_MODEL_NAME)
    classifier = build_zero_shot_classifier(bundle, FASHION_ID_CLASSES, DEMO_TEMPLATES)
    id_test = torch.utils.data.Subset(load_fashion_open("id_test"), range(0, 3000, 10))

    features, labels = extract_features_and_labels(bundle, id_test, progress=False)

    assert len(set(labels.tolist())) == len(FASHION_ID_CLASSES)
    assert accuracy(classifier.similarities(features), labels) >= 0.85


def _committed_record(kind: str) -> dict:
    path = demo_checkpoint_path().with_name(f"{DEMO_MODEL_NAME}.{kind}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def test_committed_records_match_checkpoint():
    import hashlib

    sha256 = hashlib.sha256(demo_checkpoint_path().read_bytes()).hexdigest()
    assert _committed_record("training")["sha256"] == sha256
    assert _committed_record("evaluation")["weights_id"] == f"sha256:{sha256}"
    card = demo_checkpoint_path().with_name("MODEL_CARD.md").read_text(encoding="utf-8")
    assert sha256 in card


def test_machine_description_load_remark():
    machine = {"processor": "x86_64", "cpu_count": 2, "torch_threads": 2, "device": "cpu"}
    quiet = demo._describe_machine({**machine, "load_average_start": 0.3, "load_average_end": 2.1})
    busy = demo._describe_machine({**machine, "load_average_start": 0.3, "load_average_end": 4.0})
    assert "other jobs" not in quiet
    assert "other jobs shared the CPU" in busy


@pytest.mark.slow
def test_evaluate_reports_model_card_numbers():
    results = demo.evaluate_demo_model()
    recorded = _committed_record("evaluation")

    assert results["id_test_accuracy"] >= 0.9
    assert results["id_test_accuracy"] == pytest.approx(recorded["id_test_accuracy"], abs=1e-9)
    assert results["id_test_accuracy_tensor_path"] == pytest.approx(results["id_test_accuracy"], abs=1e-3)
    assert set(results["ood"]) == {"ood_near", "ood_far", "ood_clipart"}
    assert set(results["mean_max_cosine"]) == {"id_test", *results["ood"]}
    assert results["template_cosine"]["min"] <= results["template_cosine"]["mean"]
    for split, numbers in results["ood"].items():
        for name in ("MSP", "Energy", "ΔEnergy (c=1, a=0)"):
            assert numbers[name]["auroc"] == pytest.approx(recorded["ood"][split][name]["auroc"], abs=1e-6), (split, name)


def test_help_shows_zero_default(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")  # one help entry per line

    with pytest.raises(SystemExit) as raised:
        demo.main(["train", "--help"])

    assert raised.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    seed_line = next(line for line in lines if line.lstrip().startswith("--seed"))
    assert seed_line.endswith("(default: 0)")
    assert not any("(default: None)" in line for line in lines)
    assert not any("(default: False)" in line for line in lines)


def test_same_evaluation_ignores_timing():
    stored = _committed_record("evaluation")
    rerun = json.loads(json.dumps(stored))
    rerun["load_seconds"] = stored["load_seconds"] + 3.0
    rerun["template_cosine"]["min"] += 6e-8  # float32 rounding, as between the committed record and a rerun

    assert demo._same_evaluation(stored, rerun)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id_test_accuracy", 0.9),
        ("id_test_images", 2999),
        ("weights_id", "sha256:other"),
        ("positive", "ood"),
    ],
)
def test_same_evaluation_detects_change(field, value):
    stored = _committed_record("evaluation")

    assert not demo._same_evaluation(stored, {**stored, field: value})


def test_same_evaluation_detects_nested_change():
    stored = _committed_record("evaluation")
    changed = json.loads(json.dumps(stored))
    changed["ood"]["ood_near"]["MSP"]["auroc"] += 1e-4
    missing_split = json.loads(json.dumps(stored))
    del missing_split["ood"]["ood_clipart"]

    assert not demo._same_evaluation(stored, changed)
    assert not demo._same_evaluation(stored, missing_split)


def _copy_committed_files(folder: Path) -> Path:
    """Copy the committed checkpoint and its training record into ``folder`` and return the checkpoint copy."""
    import shutil

    checkpoint = folder / demo_checkpoint_path().name
    shutil.copyfile(demo_checkpoint_path(), checkpoint)
    training = demo_checkpoint_path().with_name(f"{DEMO_MODEL_NAME}.training.json")
    shutil.copyfile(training, folder / training.name)
    return checkpoint


def _set_old_mtime(*paths) -> None:
    for path in paths:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def test_store_evaluation_keeps_timing_only_change(tmp_path):
    checkpoint = _copy_committed_files(tmp_path)
    record, card = tmp_path / f"{DEMO_MODEL_NAME}.evaluation.json", tmp_path / "MODEL_CARD.md"
    committed = _committed_record("evaluation")
    demo._store_evaluation(checkpoint, committed, card)
    record_bytes, card_bytes = record.read_bytes(), card.read_bytes()
    _set_old_mtime(record, card)

    stored = demo._store_evaluation(checkpoint, {**committed, "load_seconds": 9.99}, card)

    assert stored["load_seconds"] == committed["load_seconds"]
    assert record.read_bytes() == record_bytes
    assert card.read_bytes() == card_bytes
    assert record.stat().st_mtime_ns == 1_000_000_000
    assert card.stat().st_mtime_ns == 1_000_000_000


def test_store_evaluation_writes_changed_numbers(tmp_path):
    checkpoint = _copy_committed_files(tmp_path)
    record, card = tmp_path / f"{DEMO_MODEL_NAME}.evaluation.json", tmp_path / "MODEL_CARD.md"
    committed = _committed_record("evaluation")
    demo._store_evaluation(checkpoint, committed, card)

    demo._store_evaluation(checkpoint, {**committed, "id_test_accuracy": 0.5}, card)

    assert json.loads(record.read_text(encoding="utf-8"))["id_test_accuracy"] == 0.5
    assert "**0.5000**" in card.read_text(encoding="utf-8")


def test_store_evaluation_replaces_unreadable_record(tmp_path, caplog):
    checkpoint = _copy_committed_files(tmp_path)
    record = tmp_path / f"{DEMO_MODEL_NAME}.evaluation.json"
    record.write_text("{not json", encoding="utf-8")
    committed = _committed_record("evaluation")

    demo._store_evaluation(checkpoint, committed, None)

    assert json.loads(record.read_text(encoding="utf-8")) == committed
    assert "could not be read" in caplog.text


@pytest.mark.slow
def test_evaluate_command_leaves_committed_copies_unchanged(tmp_path):
    # The copied record and card come from the same weights, so a rerun changes only load_seconds.
    import shutil

    checkpoint = _copy_committed_files(tmp_path)
    record = tmp_path / f"{DEMO_MODEL_NAME}.evaluation.json"
    card = tmp_path / "MODEL_CARD.md"
    shutil.copyfile(demo_checkpoint_path().with_name(record.name), record)
    shutil.copyfile(demo_checkpoint_path().with_name("MODEL_CARD.md"), card)
    record_bytes, card_bytes = record.read_bytes(), card.read_bytes()
    _set_old_mtime(record, card)

    demo.main(["evaluate", "--checkpoint", str(checkpoint), "--card", str(card)])

    assert record.read_bytes() == record_bytes
    assert card.read_bytes() == card_bytes
    assert record.stat().st_mtime_ns == 1_000_000_000
    assert card.stat().st_mtime_ns == 1_000_000_000
