"""Tests of dsenergy.models: loading open_clip weights and zero-shot text classifiers."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time

import open_clip
import pytest
import torch
import torch.nn.functional as F

from dsenergy.models import (
    WeightsUnavailableError,
    ZeroShotClassifier,
    build_zero_shot_classifier,
    load_clip,
    register_model_config,
    weights_problem,
)

TINY_MODEL_NAME = "dsenergy-test-tiny"
TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
LOCAL_HINT = 'pretrained="/path/to/file.pt"'


@pytest.fixture(scope="module", autouse=True)
def tiny_config():
    if open_clip.get_model_config(TINY_MODEL_NAME) != TINY_MODEL_CONFIG:
        register_model_config(TINY_MODEL_NAME, TINY_MODEL_CONFIG)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _state_dicts_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# --------------------------------------------------------------------------------------------
# Random weights and local checkpoints


def test_random_init_is_seeded():
    state = torch.random.get_rng_state()
    first = load_clip(TINY_MODEL_NAME, seed=3)
    second = load_clip(TINY_MODEL_NAME, seed=3)
    other = load_clip(TINY_MODEL_NAME, seed=4)

    assert torch.equal(torch.random.get_rng_state(), state), "load_clip changed the global random state"
    assert _state_dicts_equal(first.model, second.model)
    assert not _state_dicts_equal(first.model, other.model)
    assert first.weights_id == second.weights_id
    assert first.weights_id.startswith("random-init-seed3-")
    assert other.weights_id.startswith("random-init-seed4-")
    assert first.pretrained is None


def test_bundle_fields(images):
    bundle = load_clip(TINY_MODEL_NAME)

    assert bundle.name == TINY_MODEL_NAME
    assert bundle.logit_scale == pytest.approx(bundle.model.logit_scale.exp().item())
    assert not bundle.model.training
    assert bundle.preprocess_val is not None and bundle.preprocess_train is not None
    assert bundle.tokenize(["a cat"]).shape == (1, TINY_MODEL_CONFIG["text_cfg"]["context_length"])

    features = bundle.encode_image(images)
    assert features.shape == (3, TINY_MODEL_CONFIG["embed_dim"])
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
    text = bundle.encode_text(["a cat", "a dog"])
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_encoded_features_support_autograd(images):
    bundle = load_clip(TINY_MODEL_NAME)
    features = bundle.encode_image(images)
    weight = torch.randn(features.shape[1], 2, requires_grad=True)

    (features @ weight).sum().backward()

    assert not features.is_inference()
    assert weight.grad is not None


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "module_prefix"])
def test_checkpoint_round_trip(tmp_path, images, layout):
    source = load_clip(TINY_MODEL_NAME, seed=7)
    state_dict = source.model.state_dict()
    if layout == "state_dict":
        saved = {"state_dict": state_dict, "epoch": 3}
    elif layout == "model":
        saved = {"model": state_dict}
    elif layout == "module_prefix":
        saved = {f"module.{key}": value for key, value in state_dict.items()}
    else:
        saved = state_dict
    path = tmp_path / "weights.pt"
    torch.save(saved, path)

    loaded = load_clip(TINY_MODEL_NAME, pretrained=path, seed=99)

    assert _state_dicts_equal(source.model, loaded.model)
    torch.testing.assert_close(loaded.encode_image(images), source.encode_image(images), atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_text(["a red dress"]), source.encode_text(["a red dress"]), atol=0, rtol=0)
    assert loaded.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.pretrained == str(path)


def test_checkpoint_weights_id_follows_content(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(load_clip(TINY_MODEL_NAME, seed=1).model.state_dict(), path)
    first_id = load_clip(TINY_MODEL_NAME, pretrained=path).weights_id

    torch.save(load_clip(TINY_MODEL_NAME, seed=2).model.state_dict(), path)
    second_id = load_clip(TINY_MODEL_NAME, pretrained=path).weights_id

    assert first_id != second_id


def test_missing_checkpoint_file(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip(TINY_MODEL_NAME, pretrained=str(path))

    message = str(raised.value)
    assert TINY_MODEL_NAME in message
    assert str(path) in message
    assert LOCAL_HINT in message


@pytest.mark.parametrize("content", [b"plain text, not a checkpoint", bytes(range(256)) * 4])
def test_unreadable_checkpoint_file(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip(TINY_MODEL_NAME, pretrained=str(path))

    message = str(raised.value)
    assert "not a PyTorch file" in message
    assert "weights_only set to False" not in message
    assert LOCAL_HINT in message


def test_checkpoint_of_other_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, path)

    with pytest.raises(WeightsUnavailableError, match="does not match model"):
        load_clip(TINY_MODEL_NAME, pretrained=path)


def test_checkpoint_of_other_size_names_shapes(tmp_path):
    wider = dict(TINY_MODEL_CONFIG, embed_dim=48)
    register_model_config("dsenergy-test-tiny-wide", wider)
    path = tmp_path / "wide.pt"
    torch.save(open_clip.create_model("dsenergy-test-tiny-wide").state_dict(), path)

    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip(TINY_MODEL_NAME, pretrained=path)
    message = str(raised.value)
    assert "tensors have other shapes" in message
    assert "text_projection (32, 48) (model (32, 32))" in message
    assert LOCAL_HINT in message


class _NotATensor:
    pass


def test_checkpoint_with_arbitrary_objects_is_rejected(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": _NotATensor()}, path)

    with pytest.raises(WeightsUnavailableError, match="weights_only=True") as raised:
        load_clip(TINY_MODEL_NAME, pretrained=path)
    assert raised.value.__suppress_context__


def test_unknown_model_name():
    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip("ViT-B-99", pretrained="openai")

    assert "ViT-B-99" in str(raised.value)
    assert "'openai'" in str(raised.value)


@pytest.mark.parametrize("name", ["dsenergy_demo", "DSEnergy-Demo"])
def test_unknown_model_suggests_demo(monkeypatch, name):
    demo = pytest.importorskip("dsenergy.demo", reason="dsenergy.demo is not available")
    # In a fresh process the demo config is not registered until the demo model is loaded.
    monkeypatch.delitem(open_clip.factory._MODEL_CONFIGS, demo.DEMO_MODEL_NAME, raising=False)

    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip(name)

    assert f"Close names: {demo.DEMO_MODEL_NAME}" in str(raised.value)


def test_unknown_model_suggests_case_variant():
    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip("vit_b_32")

    assert "Close names: ViT-B-32," in str(raised.value)


def test_weights_problem_suggests_demo(monkeypatch):
    demo = pytest.importorskip("dsenergy.demo", reason="dsenergy.demo is not available")
    monkeypatch.delitem(open_clip.factory._MODEL_CONFIGS, demo.DEMO_MODEL_NAME, raising=False)

    parameter, message = weights_problem("dsenergy_demo", None)

    assert parameter == "model"
    assert f"close names: {demo.DEMO_MODEL_NAME}" in message


def test_unknown_tag_lists_known_tags():
    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip("ViT-B-32", pretrained="no_such_tag")

    assert "no_such_tag" in str(raised.value)
    assert "laion2b_s34b_b79k" in str(raised.value)


# --------------------------------------------------------------------------------------------
# Tags and hub names without network


def test_tag_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()

    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")

    assert time.monotonic() - start < 5.0
    message = str(raised.value)
    assert "ViT-B-32" in message
    assert "laion2b_s34b_b79k" in message
    assert LOCAL_HINT in message
    assert raised.value.__cause__ is None


def _closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("name", "pretrained"),
    [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-32", "hf-hub:example-org/example-clip"), ("hf-hub:example-org/example-clip", None)],
)
def test_unreachable_hub_fails_fast(monkeypatch, name, pretrained):
    # A closed port on this machine as the hub endpoint simulates a machine without network access.
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_loopback_port()}")
    start = time.monotonic()

    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip(name, pretrained=pretrained)

    assert time.monotonic() - start < 5.0
    message = str(raised.value)
    assert name in message
    assert repr(pretrained) in message
    assert "cannot be reached" in message


# --------------------------------------------------------------------------------------------
# Precision


@pytest.mark.parametrize(("precision", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_low_precision_loads(tmp_path, images, precision, dtype):
    source = load_clip(TINY_MODEL_NAME, seed=5)
    path = tmp_path / "weights.pt"
    torch.save(source.model.state_dict(), path)

    bundle = load_clip(TINY_MODEL_NAME, pretrained=path, precision=precision)

    assert bundle.dtype == dtype
    assert bundle.precision == precision
    features = bundle.encode_image(images)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, source.encode_image(images), atol=0.05, rtol=0)


def test_invalid_precision():
    with pytest.raises(ValueError, match="'fp8'"):
        load_clip(TINY_MODEL_NAME, precision="fp8")
    with pytest.raises(ValueError, match="CUDA"):
        load_clip(TINY_MODEL_NAME, precision="amp", device="cpu")


# --------------------------------------------------------------------------------------------
# Zero-shot classifier


CLASS_NAMES = ["t-shirt", "trouser", "sandal"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {c}.", "{}"]


def test_zero_shot_matches_hand_computation():
    bundle = load_clip(TINY_MODEL_NAME)
    classifier = build_zero_shot_classifier(bundle, CLASS_NAMES, TEMPLATES, batch_size=2)

    expected = []
    for class_name in CLASS_NAMES:
        prompts = ["a photo of a " + class_name + ".", "a drawing of a " + class_name + ".", class_name]
        per_prompt = torch.stack([bundle.encode_text([prompt])[0] for prompt in prompts])
        mean = per_prompt.mean(dim=0)
        expected.append(mean / mean.norm())
    torch.testing.assert_close(classifier.text_features, torch.stack(expected), atol=1e-5, rtol=0)

    assert classifier.text_features.shape == (3, TINY_MODEL_CONFIG["embed_dim"])
    torch.testing.assert_close(classifier.text_features.norm(dim=-1), torch.ones(3))
    assert classifier.class_names == CLASS_NAMES
    assert classifier.templates == TEMPLATES
    assert classifier.logit_scale == pytest.approx(bundle.logit_scale)
    assert classifier.temperature == pytest.approx(1 / bundle.logit_scale)


def test_zero_shot_averaging_differs_from_single_template():
    bundle = load_clip(TINY_MODEL_NAME)
    averaged = build_zero_shot_classifier(bundle, CLASS_NAMES, TEMPLATES).text_features
    single = build_zero_shot_classifier(bundle, CLASS_NAMES, TEMPLATES[:1]).text_features

    torch.testing.assert_close(single, bundle.encode_text([f"a photo of a {name}." for name in CLASS_NAMES]))
    assert not torch.allclose(averaged, single, atol=1e-3)


def test_zero_shot_similarities_and_logits(images):
    bundle = load_clip(TINY_MODEL_NAME)
    classifier = build_zero_shot_classifier(bundle, CLASS_NAMES, TEMPLATES)
    raw = 3.0 * torch.randn(4, TINY_MODEL_CONFIG["embed_dim"], generator=torch.Generator().manual_seed(1))

    similarities = classifier.similarities(raw)

    expected = F.normalize(raw, dim=-1) @ classifier.text_features.T
    assert similarities.shape == (4, 3)
    torch.testing.assert_close(similarities, expected)
    assert similarities.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(classifier.logits(raw), bundle.logit_scale * expected)
    torch.testing.assert_close(classifier.logits(raw, logit_scale=1.0), expected)


def test_zero_shot_callable_templates():
    bundle = load_clip(TINY_MODEL_NAME)
    from_callable = build_zero_shot_classifier(bundle, CLASS_NAMES, [lambda name: f"a photo of a {name}."])
    from_string = build_zero_shot_classifier(bundle, CLASS_NAMES, ["a photo of a {}."])

    torch.testing.assert_close(from_callable.text_features, from_string.text_features)


@pytest.mark.parametrize("template", ["a photo of a cat.", "a photo of a {name}.", "a {} and a {}.", "a {0}.", "a {"])
def test_zero_shot_rejects_bad_template(template):
    bundle = load_clip(TINY_MODEL_NAME)
    with pytest.raises(ValueError) as raised:
        build_zero_shot_classifier(bundle, CLASS_NAMES, ["a photo of a {}.", template])
    assert repr(template) in str(raised.value)


def test_zero_shot_rejects_empty_inputs():
    bundle = load_clip(TINY_MODEL_NAME)
    with pytest.raises(ValueError, match="class_names"):
        build_zero_shot_classifier(bundle, [], TEMPLATES)
    with pytest.raises(ValueError, match="templates"):
        build_zero_shot_classifier(bundle, CLASS_NAMES, [])


@pytest.mark.parametrize("argument", ["class_names", "templates"])
def test_zero_shot_rejects_bare_string(argument):
    bundle = load_clip(TINY_MODEL_NAME)
    arguments = {"class_names": CLASS_NAMES, "templates": TEMPLATES}
    arguments[argument] = "cat {}"

    with pytest.raises(TypeError) as raised:
        build_zero_shot_classifier(bundle, **arguments)

    message = str(raised.value)
    assert f"{argument} must be a sequence of strings" in message
    assert "got the string 'cat {}'" in message
    assert "['cat {}']" in message


def test_zero_shot_rejects_non_string_class():
    bundle = load_clip(TINY_MODEL_NAME)

    with pytest.raises(TypeError) as raised:
        build_zero_shot_classifier(bundle, ["cat", 3], TEMPLATES)

    assert "class_names[1] is int 3" in str(raised.value)


def test_zero_shot_accepts_tuples():
    bundle = load_clip(TINY_MODEL_NAME)

    classifier = build_zero_shot_classifier(bundle, tuple(CLASS_NAMES), tuple(TEMPLATES))

    assert classifier.class_names == CLASS_NAMES
    assert classifier.templates == TEMPLATES


def test_classifier_rejects_bare_string():
    with pytest.raises(TypeError, match="got the string 'cat'"):
        ZeroShotClassifier(F.normalize(torch.randn(3, 8), dim=-1), 100.0, "cat", TEMPLATES)


def test_classifier_rejects_row_count_mismatch():
    with pytest.raises(ValueError, match=r"does not fit 3 class names"):
        ZeroShotClassifier(F.normalize(torch.randn(2, 8), dim=-1), 100.0, CLASS_NAMES, TEMPLATES)


def test_classifier_repr_is_compact():
    classifier = ZeroShotClassifier(F.normalize(torch.randn(3, 8), dim=-1), 100.0, CLASS_NAMES, TEMPLATES)

    text = repr(classifier)

    assert "text_features=float32[3, 8] cpu" in text
    assert "class_names=['t-shirt', 'trouser', 'sandal']" in text
    assert "tensor(" not in text


def test_similarities_reject_one_dimensional_input():
    classifier = ZeroShotClassifier(F.normalize(torch.randn(3, 8), dim=-1), 100.0, CLASS_NAMES, TEMPLATES)

    with pytest.raises(ValueError) as raised:
        classifier.similarities(torch.randn(8))

    message = str(raised.value)
    assert "not a 2-D tensor" in message
    assert "N×8" in message
    assert "unsqueeze(0)" in message
    assert "do not match" not in message


def test_similarities_reject_wrong_dimension():
    classifier = ZeroShotClassifier(F.normalize(torch.randn(3, 8), dim=-1), 100.0, CLASS_NAMES, TEMPLATES)
    with pytest.raises(ValueError, match="dimension 8"):
        classifier.similarities(torch.randn(2, 9))


def test_load_logs_source(tmp_path, caplog):
    path = tmp_path / "weights.pt"
    torch.save(load_clip(TINY_MODEL_NAME).model.state_dict(), path)

    with caplog.at_level(logging.INFO, logger="dsenergy.models"):
        load_clip(TINY_MODEL_NAME, pretrained=path)

    assert any(str(path) in record.getMessage() and "sha256:" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------------------------
# Demo model


def _demo_checkpoint():
    demo = pytest.importorskip("dsenergy.demo", reason="dsenergy.demo is not available")
    try:
        path = demo.demo_checkpoint_path()
    except FileNotFoundError as error:
        pytest.skip(f"the data folder is missing: {error}")
    if not path.is_file():
        pytest.skip(f"the demo checkpoint {path} has not been trained yet (python -m dsenergy.demo train)")
    return demo, path


def test_demo_model_loads_committed_checkpoint(images):
    demo, path = _demo_checkpoint()

    bundle = load_clip(demo.DEMO_MODEL_NAME)

    assert bundle.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert bundle.source == str(path)
    size = bundle.model.visual.image_size
    features = bundle.encode_image(torch.randn(2, 3, *size))
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))


def test_demo_model_without_checkpoint(tmp_path, monkeypatch):
    demo = pytest.importorskip("dsenergy.demo", reason="dsenergy.demo is not available")
    monkeypatch.setenv("DSENERGY_DATA_DIR", str(tmp_path))

    with pytest.raises(WeightsUnavailableError) as raised:
        load_clip(demo.DEMO_MODEL_NAME)

    message = str(raised.value)
    assert demo.DEMO_MODEL_NAME in message
    assert str(tmp_path / "models") in message
    assert "python -m dsenergy.demo train" in message
    assert LOCAL_HINT in message


@pytest.mark.parametrize("recorded_matches", [True, False])
def test_demo_checkpoint_checked_against_its_record(tmp_path, monkeypatch, caplog, recorded_matches):
    demo = pytest.importorskip("dsenergy.demo", reason="dsenergy.demo is not available")
    monkeypatch.setenv("DSENERGY_DATA_DIR", str(tmp_path))
    path = tmp_path / "models" / "dsenergy-demo.pt"
    sha256 = demo.save_demo_checkpoint(demo.create_demo_model(seed=3), path)
    record = {"sha256": sha256 if recorded_matches else "0" * 64}
    (tmp_path / "models" / "dsenergy-demo.training.json").write_text(json.dumps(record), encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="dsenergy.models"):
        bundle = load_clip(demo.DEMO_MODEL_NAME)

    assert bundle.weights_id == f"sha256:{sha256}"
    warned = [record.getMessage() for record in caplog.records if "is not the one its training record" in record.getMessage()]
    assert len(warned) == (0 if recorded_matches else 1)


def test_resolve_device():
    from dsenergy.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            resolve_device("cuda")


def test_demo_checkpoint_with_unreadable_record(tmp_path, monkeypatch, caplog):
    demo = pytest.importorskip("dsenergy.demo", reason="dsenergy.demo is not available")
    monkeypatch.setenv("DSENERGY_DATA_DIR", str(tmp_path))
    path = tmp_path / "models" / "dsenergy-demo.pt"
    sha256 = demo.save_demo_checkpoint(demo.create_demo_model(seed=3), path)
    (tmp_path / "models" / "dsenergy-demo.training.json").write_text("{", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="dsenergy.models"):
        bundle = load_clip(demo.DEMO_MODEL_NAME)

    assert bundle.weights_id == f"sha256:{sha256}"
    assert "Could not read the demo training record" in caplog.text
