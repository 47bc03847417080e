"""Tests of the CoOp prompt learner on real open_clip text towers with random or demo weights."""

from __future__ import annotations

import open_clip
import pytest
import torch
from torch import nn

from dsenergy.prompts import PromptLearner, text_tower_parts
from tests.ddp_worker import CLASS_NAMES, TINY_MODEL_CONFIG, TINY_MODEL_NAME, tiny_bundle

PHRASE = "a photo of a"


def _reference_features(model: nn.Module, tokenizer, class_names) -> torch.Tensor:
    tokens = tokenizer([f"{PHRASE} {name}." for name in class_names])
    with torch.no_grad():
        return model.encode_text(tokens, normalize=True)


@pytest.fixture(scope="module")
def vit_b32():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    return model, open_clip.get_tokenizer("ViT-B-32")


def test_phrase_init_matches_encode_text_vit_b32(vit_b32):
    model, tokenizer = vit_b32
    names = ["t-shirt", "ankle boot", "bag"]
    learner = PromptLearner(model, tokenizer, names, ctx_init=PHRASE)

    with torch.no_grad():
        features = learner()

    assert learner.n_ctx == 4
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, _reference_features(model, tokenizer, names), atol=1e-5, rtol=0)


def test_phrase_init_matches_encode_text_custom_text_tower():
    # force_custom_text builds open_clip's CustomTextCLIP, whose text tower is a TextTransformer module.
    bundle = tiny_bundle()
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL_NAME, pretrained=None, force_custom_text=True)
    assert type(model).__name__ == "CustomTextCLIP"
    learner = PromptLearner(model, bundle.tokenizer, CLASS_NAMES, ctx_init=PHRASE)

    with torch.no_grad():
        features = learner()

    reference = _reference_features(model, bundle.tokenizer, CLASS_NAMES)
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=0)


def test_phrase_init_matches_encode_text_class_specific():
    bundle = tiny_bundle()
    learner = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, ctx_init=PHRASE, class_specific=True)

    with torch.no_grad():
        features = learner()

    assert learner.context_vectors.shape == (len(CLASS_NAMES), 4, TINY_MODEL_CONFIG["text_cfg"]["width"])
    torch.testing.assert_close(features, _reference_features(bundle.model, bundle.tokenizer, CLASS_NAMES), atol=1e-5, rtol=0)


def test_phrase_init_matches_encode_text_demo_model():
    from dsenergy.demo import DEMO_MODEL_NAME, demo_checkpoint_path
    from dsenergy.models import load_clip

    if not demo_checkpoint_path().is_file():
        pytest.skip(f"demo checkpoint {demo_checkpoint_path()} is missing; train it with `python -m dsenergy.demo train`")
    bundle = load_clip(DEMO_MODEL_NAME)
    learner = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, ctx_init=PHRASE)

    with torch.no_grad():
        features = learner()

    torch.testing.assert_close(features, _reference_features(bundle.model, bundle.tokenizer, CLASS_NAMES), atol=1e-5, rtol=0)


def test_prompt_tokens_place_context_after_start_token():
    bundle = tiny_bundle()
    learner = PromptLearner(bundle.model, bundle.tokenizer, ["bag"], n_ctx=3)

    expected = bundle.tokenizer(["X X X bag."])
    placeholder = bundle.tokenizer(["X"])[0, 1]
    end_of_text = int(expected[0].argmax())

    # The causal text tower lets the learner drop every position after the end-of-text token.
    assert learner.active_length == end_of_text + 1
    assert torch.equal(learner.token_ids, expected[:, : end_of_text + 1])
    assert torch.equal(learner.token_ids[0, 1:4], placeholder.repeat(3))
    assert learner.token_prefix.shape[1] == 1
    assert learner.token_suffix.shape[1] == end_of_text + 1 - 4


def test_only_context_vectors_are_trainable():
    bundle = tiny_bundle()
    bundle.model.train()
    for parameter in bundle.model.parameters():
        parameter.requires_grad_(True)
    learner = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=4)

    assert [name for name, _ in learner.named_parameters()] == ["context_vectors"]
    assert list(learner.state_dict()) == ["context_vectors"]
    assert not any(parameter.requires_grad for parameter in bundle.model.parameters())
    assert not bundle.model.training
    assert learner.context_vectors.requires_grad


def test_backward_reaches_only_context_vectors():
    bundle = tiny_bundle()
    learner = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=4)

    learner().sum().backward()

    assert learner.context_vectors.grad is not None
    assert learner.context_vectors.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in bundle.model.parameters())


def test_random_init_is_seeded():
    bundle = tiny_bundle()
    first = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=16, seed=3)
    again = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=16, seed=3)
    other = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=16, seed=4)

    assert torch.equal(first.context_vectors, again.context_vectors)
    assert not torch.equal(first.context_vectors, other.context_vectors)
    assert first.context_vectors.shape == (16, TINY_MODEL_CONFIG["text_cfg"]["width"])
    assert abs(float(first.context_vectors.detach().std()) - 0.02) < 0.004


def test_generic_context_is_shared_by_classes():
    bundle = tiny_bundle()
    learner = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=4)

    embeddings = learner.prompt_embeddings()

    assert embeddings.shape[:2] == (len(CLASS_NAMES), learner.active_length)
    assert learner.active_length < TINY_MODEL_CONFIG["text_cfg"]["context_length"]
    for row in embeddings[1:]:
        assert torch.equal(row[1:5], embeddings[0, 1:5])


def test_class_specific_context_differs_per_class():
    bundle = tiny_bundle()
    learner = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=4, class_specific=True)

    embeddings = learner.prompt_embeddings()

    assert learner.context_vectors.shape[0] == len(CLASS_NAMES)
    assert not torch.equal(embeddings[0, 1:5], embeddings[1, 1:5])


def test_hugging_face_text_tower_raises():
    # A stand-in: real Hugging Face text towers need a model download, which is not possible offline.
    class HFLikeCLIP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text = nn.Linear(4, 4)

    with pytest.raises(NotImplementedError, match="HFLikeCLIP"):
        text_tower_parts(HFLikeCLIP())


def test_empty_class_names_raise():
    bundle = tiny_bundle()
    with pytest.raises(ValueError, match="class_names"):
        PromptLearner(bundle.model, bundle.tokenizer, [], n_ctx=4)


def test_wrong_tokenizer_length_raises():
    bundle = tiny_bundle()
    with pytest.raises(ValueError, match="context length"):
        PromptLearner(bundle.model, open_clip.get_tokenizer("ViT-B-32"), CLASS_NAMES, n_ctx=4)


def test_given_context_vectors_are_used():
    bundle = tiny_bundle()
    values = torch.full((4, TINY_MODEL_CONFIG["text_cfg"]["width"]), 0.5)

    learner = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=4, context_vectors=values)

    assert torch.equal(learner.context_vectors.detach(), values)


def test_given_context_vectors_wrong_shape_raise():
    bundle = tiny_bundle()
    values = torch.zeros(4, TINY_MODEL_CONFIG["text_cfg"]["width"] + 1)

    with pytest.raises(ValueError, match=r"context_vectors has shape \(4, 33\).*need shape \(4, 32\)"):
        PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=4, context_vectors=values)
