"""Tests of dsenergy.features: image feature extraction and the feature disk cache."""

from __future__ import annotations

import logging

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision import transforms

from dsenergy._paths import cache_dir
from dsenergy.features import (
    CACHE_FORMAT_VERSION,
    cached_feature_set,
    cached_features,
    extract_features,
    extract_features_and_labels,
    transform_fingerprint,
)
from dsenergy.models import WeightsUnavailableError, load_clip, register_model_config

TINY_MODEL_NAME = "dsenergy-test-tiny"
TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class PilDataset(Dataset):
    """Seeded random RGB PIL images with labels and a ``samples`` list like torchvision's ImageFolder."""

    def __init__(self, count: int = 10, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.pixels = rng.integers(0, 256, size=(count, 40, 40, 3), dtype=np.uint8)
        self.labels = np.arange(count) % 3
        self.samples = [(f"images/{index:03d}.png", int(label)) for index, label in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return Image.fromarray(self.pixels[index]), int(self.labels[index])


@pytest.fixture(scope="module")
def bundle():
    if open_clip.get_model_config(TINY_MODEL_NAME) != TINY_MODEL_CONFIG:
        register_model_config(TINY_MODEL_NAME, TINY_MODEL_CONFIG)
    return load_clip(TINY_MODEL_NAME, seed=0)


@pytest.fixture(scope="module")
def demo_bundle():
    demo = pytest.importorskip("dsenergy.demo", reason="dsenergy.demo is not available")
    try:
        return load_clip(demo.DEMO_MODEL_NAME)
    except (WeightsUnavailableError, FileNotFoundError) as error:
        pytest.skip(f"the demo model cannot be loaded: {error}")


class TensorItems(Dataset):
    """Dataset of (image tensor, label) items, like a dataset that applies its own transform."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], 0


def _bare_features(bundle, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(bundle.model.encode_image(images), dim=-1)


# --------------------------------------------------------------------------------------------
# Extraction


def test_extract_tensor_matches_bare_loop(bundle):
    images = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    features = extract_features(bundle, images, batch_size=3, progress=False)

    assert features.shape == (7, TINY_MODEL_CONFIG["embed_dim"])
    assert features.dtype == torch.float32
    assert features.device.type == "cpu"
    torch.testing.assert_close(features, _bare_features(bundle, images), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(7))


def test_extract_tensor_dataset_returns_labels(bundle):
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([4, 0, 1, 1, 2], dtype=torch.int32)

    features, returned = extract_features_and_labels(bundle, TensorDataset(images, labels), batch_size=2,
                                                     progress=False)

    torch.testing.assert_close(features, _bare_features(bundle, images), atol=1e-5, rtol=0)
    assert returned.dtype == torch.int64
    assert returned.tolist() == [4, 0, 1, 1, 2]


def test_extract_pil_dataset_applies_transform(bundle):
    dataset = PilDataset(count=5)
    expected_inputs = torch.stack([bundle.preprocess_val(dataset[index][0]) for index in range(5)])

    features, labels = extract_features_and_labels(bundle, dataset, batch_size=2, progress=False)

    torch.testing.assert_close(features, _bare_features(bundle, expected_inputs), atol=1e-5, rtol=0)
    assert labels.tolist() == dataset.labels.tolist()


def test_extract_without_labels(bundle):
    class ImagesOnly(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return torch.full((3, 32, 32), float(index))

    features, labels = extract_features_and_labels(bundle, ImagesOnly(), batch_size=2, progress=False)

    assert features.shape == (3, TINY_MODEL_CONFIG["embed_dim"])
    assert labels is None


def test_extract_with_plain_module(bundle):
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    features = extract_features(bundle.model, images, batch_size=4, progress=False)

    torch.testing.assert_close(features, _bare_features(bundle, images), atol=1e-5, rtol=0)


def test_extract_output_supports_autograd_and_keeps_mode(bundle):
    bundle.model.train()
    try:
        features = extract_features(bundle, torch.randn(2, 3, 32, 32), progress=False)
        assert bundle.model.training
    finally:
        bundle.model.eval()
    weight = torch.randn(features.shape[1], 3, requires_grad=True)

    (features @ weight).sum().backward()

    assert not features.is_inference()
    assert weight.grad is not None


def test_extract_rejects_bad_inputs(bundle):
    with pytest.raises(ValueError, match="empty"):
        extract_features(bundle, torch.empty(0, 3, 32, 32), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(bundle, torch.randn(1, 3, 32, 32), batch_size=0, progress=False)
    with pytest.raises(TypeError, match="transform"):
        extract_features(bundle.model, PilDataset(count=2), progress=False)
    with pytest.raises(TypeError, match="ClipBundle"):
        extract_features("ViT-B-32", torch.randn(1, 3, 32, 32), progress=False)


def test_extract_rejects_uint8_tensor(demo_bundle):
    pixels = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)

    with pytest.raises(TypeError) as raised:
        extract_features(demo_bundle, pixels, progress=False)

    message = str(raised.value)
    assert "torch.uint8" in message
    assert "N×3×28×28" in message
    assert "PIL images" in message
    assert "bundle.preprocess_val" in message


def test_extract_rejects_uint8_tensor_dataset(demo_bundle):
    pixels = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)

    with pytest.raises(TypeError, match="torch.uint8"):
        extract_features(demo_bundle, TensorDataset(pixels, torch.tensor([0, 1])), progress=False)


def test_extract_rejects_uint8_from_transform(demo_bundle):
    to_uint8 = transforms.Compose([transforms.Resize(28), transforms.CenterCrop(28), transforms.PILToTensor()])

    with pytest.raises(TypeError) as raised:
        extract_features(demo_bundle, PilDataset(count=2), transform=to_uint8, progress=False)

    message = str(raised.value)
    assert "item 0 of dtype torch.uint8" in message
    assert "3×28×28" in message


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 1, 28, 28), (2, 28, 28, 3), (2, 3, 28)])
def test_extract_rejects_wrong_tensor_shape(demo_bundle, shape):
    with pytest.raises(ValueError) as raised:
        extract_features(demo_bundle, torch.randn(shape), progress=False)

    message = str(raised.value)
    assert "Expected N×3×28×28 preprocessed images" in message
    assert f"shape {shape}" in message


def test_extract_single_image_suggests_unsqueeze(demo_bundle):
    with pytest.raises(ValueError) as raised:
        extract_features(demo_bundle, torch.randn(3, 28, 28), progress=False)

    assert "images.unsqueeze(0)" in str(raised.value)


def test_extract_rejects_wrong_item_shape(demo_bundle):
    with pytest.raises(ValueError) as raised:
        extract_features(demo_bundle, TensorItems(torch.randn(2, 1, 28, 28)), progress=False)

    message = str(raised.value)
    assert "Expected a 3×28×28 preprocessed image" in message
    assert "item 0 of shape (1, 28, 28)" in message


def test_extract_rejects_list_of_ints(demo_bundle):
    with pytest.raises(TypeError) as raised:
        extract_features(demo_bundle, [1, 2, 3], progress=False)

    message = str(raised.value)
    assert "Item 0 has type int" in message
    assert "PIL images or preprocessed float tensors 3×28×28" in message


def test_extract_rejects_non_dataset(demo_bundle):
    with pytest.raises(TypeError, match="Cannot encode images from int 5"):
        extract_features(demo_bundle, 5, progress=False)


def test_extract_accepts_list_of_pil_images(demo_bundle):
    dataset = PilDataset(count=3)
    images = [dataset[index][0] for index in range(3)]

    from_list = extract_features(demo_bundle, images, progress=False)
    from_dataset = extract_features(demo_bundle, dataset, progress=False)

    torch.testing.assert_close(from_list, from_dataset, atol=0, rtol=0)


def test_extract_accepts_preprocessed_tensor(demo_bundle):
    dataset = PilDataset(count=3)
    preprocessed = torch.stack([demo_bundle.preprocess_val(dataset[index][0]) for index in range(3)])

    from_tensor = extract_features(demo_bundle, preprocessed, progress=False)

    torch.testing.assert_close(from_tensor, extract_features(demo_bundle, dataset, progress=False), atol=1e-6, rtol=0)


def test_extract_amp_on_cpu_is_ignored_with_warning(bundle, caplog):
    images = torch.randn(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="dsenergy.features"):
        features = extract_features(bundle, images, amp=True, progress=False)

    torch.testing.assert_close(features, _bare_features(bundle, images), atol=1e-5, rtol=0)
    assert any("only runs on CUDA" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------------------------
# Cache


def test_cache_miss_then_hit(bundle, caplog):
    dataset = PilDataset(count=6)

    with caplog.at_level(logging.INFO, logger="dsenergy.features"):
        first = cached_feature_set(bundle, dataset, "pil/test", progress=False)
        second = cached_feature_set(bundle, dataset, "pil/test", progress=False)

    assert not first.cache_hit
    assert second.cache_hit
    assert first.key == second.key
    assert first.path == cache_dir() / "features" / f"{first.key}.pt"
    assert first.path.is_file()
    torch.testing.assert_close(second.features, first.features, atol=0, rtol=0)
    assert second.labels.tolist() == dataset.labels.tolist()
    messages = [record.getMessage() for record in caplog.records]
    assert any("cache miss" in message and "dataset_id=pil/test" in message for message in messages)
    assert any("cache hit" in message and TINY_MODEL_NAME in message for message in messages)
    assert list(first.path.parent.glob("*.tmp")) == []


def test_cached_features_returns_tensor_and_labels(bundle):
    dataset = PilDataset(count=4)

    features = cached_features(bundle, dataset, "pil/test", progress=False)
    again, labels = cached_features(bundle, dataset, "pil/test", return_labels=True, progress=False)

    assert isinstance(features, torch.Tensor)
    torch.testing.assert_close(again, features, atol=0, rtol=0)
    assert labels.tolist() == dataset.labels.tolist()


def test_cache_explicit_folder(bundle, tmp_path):
    feature_set = cached_feature_set(bundle, torch.randn(2, 3, 32, 32), "tensor/test", cache_dir=tmp_path,
                                     progress=False)

    assert feature_set.path.parent == tmp_path / "features"
    assert feature_set.path.is_file()


def _assert_rebuilt(bundle, dataset, caplog, reason: str) -> None:
    with caplog.at_level(logging.WARNING, logger="dsenergy.features"):
        rebuilt = cached_feature_set(bundle, dataset, "pil/test", progress=False)

    assert not rebuilt.cache_hit
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(reason in message and str(rebuilt.path) in message for message in warnings), warnings
    assert cached_feature_set(bundle, dataset, "pil/test", progress=False).cache_hit


def test_cache_truncated_file_is_rebuilt(bundle, caplog):
    dataset = PilDataset(count=6)
    original = cached_feature_set(bundle, dataset, "pil/test", progress=False)
    content = original.path.read_bytes()
    original.path.write_bytes(content[: len(content) // 2])

    _assert_rebuilt(bundle, dataset, caplog, "unreadable")


def test_cache_corrupt_file_warning(bundle, caplog):
    dataset = PilDataset(count=6)
    original = cached_feature_set(bundle, dataset, "pil/test", progress=False)
    # Bytes that are not a zip archive make torch.load fall back to unpickling, which fails with
    # an UnpicklingError whose text advises weights_only=False.
    original.path.write_bytes(bytes(range(256)) * 4)

    with caplog.at_level(logging.WARNING, logger="dsenergy.features"):
        rebuilt = cached_feature_set(bundle, dataset, "pil/test", progress=False)

    assert not rebuilt.cache_hit
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(original.path) in warnings[0]
    assert "corrupt or unreadable" in warnings[0]
    assert "UnpicklingError" in warnings[0]
    assert "rebuilding it" in warnings[0]
    assert "weights_only" not in warnings[0]


def test_feature_set_repr_is_compact(bundle):
    feature_set = cached_feature_set(bundle, PilDataset(count=6), "pil/test", progress=False)

    text = repr(feature_set)

    assert "features=float32[6, 32]" in text
    assert "labels=int64[6]" in text
    assert f"key='{feature_set.key[:12]}…'" in text
    assert str(feature_set.path) in text
    assert "cache_hit=False" in text
    assert "tensor(" not in text


def test_cache_flipped_feature_bytes_are_rebuilt(bundle, caplog):
    dataset = PilDataset(count=6)
    original = cached_feature_set(bundle, dataset, "pil/test", progress=False)
    content = bytearray(original.path.read_bytes())
    offset = content.find(original.features.numpy().tobytes()[:64])
    assert offset >= 0, "the raw feature bytes were not found in the cache file"
    content[offset + 10] ^= 0xFF
    original.path.write_bytes(bytes(content))

    _assert_rebuilt(bundle, dataset, caplog, "checksum")
    torch.testing.assert_close(cached_features(bundle, dataset, "pil/test", progress=False), original.features)


def test_cache_stale_format_version_is_rebuilt(bundle, caplog):
    dataset = PilDataset(count=6)
    original = cached_feature_set(bundle, dataset, "pil/test", progress=False)
    content = torch.load(original.path, weights_only=True)
    content["header"]["format_version"] = CACHE_FORMAT_VERSION - 1
    torch.save(content, original.path)

    _assert_rebuilt(bundle, dataset, caplog, "format version")


def test_cache_file_with_other_key_is_rebuilt(bundle, caplog):
    dataset = PilDataset(count=6)
    other = cached_feature_set(bundle, dataset, "pil/other", progress=False)
    target = cached_feature_set(bundle, dataset, "pil/test", progress=False)
    target.path.write_bytes(other.path.read_bytes())

    _assert_rebuilt(bundle, dataset, caplog, "key fields")


def test_cache_key_depends_on_transform(bundle):
    dataset = PilDataset(count=4)
    default = cached_feature_set(bundle, dataset, "pil/test", progress=False)
    resized = open_clip.image_transform(32, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    changed = cached_feature_set(bundle, dataset, "pil/test", transform=resized, progress=False)
    renamed = cached_feature_set(bundle, dataset, "pil/test", transform_id="custom", progress=False)

    assert not changed.cache_hit
    assert changed.key != default.key
    assert not renamed.cache_hit
    assert renamed.key not in (default.key, changed.key)
    assert not torch.allclose(changed.features, default.features)


def test_cache_key_depends_on_sample_list(bundle):
    dataset = PilDataset(count=4)
    first = cached_feature_set(bundle, dataset, "pil/test", progress=False)
    dataset.samples[2] = ("images/renamed.png", dataset.samples[2][1])

    second = cached_feature_set(bundle, dataset, "pil/test", progress=False)

    assert not second.cache_hit
    assert second.key != first.key


def test_cache_key_depends_on_length_and_labels(bundle):
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    base = cached_feature_set(bundle, TensorDataset(images, torch.tensor([0, 1, 2, 3])), "t", progress=False)
    relabelled = cached_feature_set(bundle, TensorDataset(images, torch.tensor([0, 1, 2, 2])), "t", progress=False)
    shorter = cached_feature_set(bundle, TensorDataset(images[:3], torch.tensor([0, 1, 2])), "t", progress=False)

    assert len({base.key, relabelled.key, shorter.key}) == 3
    assert not relabelled.cache_hit
    assert not shorter.cache_hit


def test_cache_key_depends_on_weights(bundle):
    images = torch.randn(2, 3, 32, 32)
    other = load_clip(TINY_MODEL_NAME, seed=1)

    first = cached_feature_set(bundle, images, "tensor/test", progress=False)
    second = cached_feature_set(other, images, "tensor/test", progress=False)

    assert first.key != second.key
    assert not second.cache_hit


def test_transform_fingerprint_has_no_memory_address(bundle):
    text = transform_fingerprint(bundle.preprocess_val)

    assert "0x" not in text
    assert "Normalize" in text
    assert text == transform_fingerprint(load_clip(TINY_MODEL_NAME, seed=2).preprocess_val)


def test_cache_rejects_plain_module(bundle):
    with pytest.raises(TypeError, match="ClipBundle"):
        cached_feature_set(bundle.model, torch.randn(1, 3, 32, 32), "tensor/test", progress=False)
