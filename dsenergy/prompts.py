r"""CoOp prompt learner for the text tower of open_clip CLIP models.

Context optimisation (CoOp; Zhou, Yang, Loy, Liu, "Learning to Prompt for Vision-Language Models",
IJCV 2022) replaces the hand-written words of a prompt with ``n_ctx`` learned vectors in the token
embedding space. For class ``k`` the text tower reads

.. math::

    t_k = [\mathrm{SOT}, v_1, \dots, v_{n_{ctx}}, \mathrm{name}_k, \texttt{.}, \mathrm{EOT}, \mathrm{pad}, \dots]

and the class text feature is :math:`w_k = g(t_k) / \lVert g(t_k) \rVert` with ``g`` the frozen
text transformer. The context vectors :math:`v_j` are shared by all classes (generic context) or
learned per class (``class_specific=True``); the class-name tokens stay at the end.

Supported towers: ``open_clip.model.CLIP`` (the text tower lives on the model itself) and
``open_clip.model.CustomTextCLIP`` whose ``text`` is an ``open_clip.transformer.TextTransformer``.
Hugging Face text towers (``HFTextEncoder``) and towers with an appended class embedding (CoCa) raise
``NotImplementedError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PromptLearner", "text_tower_parts", "TextTowerParts", "PLACEHOLDER_TOKEN"]

logger = logging.getLogger(__name__)

#: Word tokenised in the positions of randomly initialised context vectors (CoOp uses "X").
PLACEHOLDER_TOKEN = "X"


@dataclass
class TextTowerParts:
    """Modules and settings of an open_clip text tower that a prompt learner needs."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: nn.Module | torch.Tensor | None
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None
    pad_id: int | None
    use_pad_mask: bool
    heads: int
    context_length: int


def text_tower_parts(model: nn.Module) -> TextTowerParts:
    """Collect the text-tower parts of an open_clip model, or raise ``NotImplementedError``."""
    model_type = type(model).__name__
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        tower = model
        pad_id, use_pad_mask = None, False
    elif hasattr(model, "text") and hasattr(model.text, "token_embedding"):
        tower = model.text
        if getattr(tower, "cls_emb", None) is not None:
            raise NotImplementedError(
                f"{model_type}: text towers with an appended class embedding (CoCa) are not supported "
                "by PromptLearner; use a CLIP model with a standard text transformer"
            )
        pad_id = getattr(tower, "pad_id", None)
        use_pad_mask = bool(getattr(tower, "use_pad_mask", False))
    else:
        text = getattr(model, "text", None)
        raise NotImplementedError(
            f"{model_type} with text tower {type(text).__name__}: PromptLearner needs an open_clip text "
            "transformer (token_embedding, positional_embedding, transformer, ln_final, text_projection); "
            "Hugging Face text towers are not supported"
        )

    pool_type = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
    eos_id = getattr(tower, "text_eos_id", None)
    if eos_id is None:
        eos_id = getattr(tower, "eos_id", None)
    return TextTowerParts(
        token_embedding=tower.token_embedding,
        positional_embedding=tower.positional_embedding,
        transformer=tower.transformer,
        ln_final=tower.ln_final,
        text_projection=tower.text_projection,
        attn_mask=getattr(tower, "attn_mask", None),
        pool_type=pool_type,
        eos_id=eos_id,
        pad_id=pad_id,
        use_pad_mask=use_pad_mask,
        heads=int(getattr(tower, "heads", tower.transformer.resblocks[0].attn.num_heads)),
        context_length=int(tower.positional_embedding.shape[0]),
    )


def _pool_tokens(x: torch.Tensor, token_ids: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    """Pool one feature per sequence the way open_clip's ``text_global_pool`` does."""
    rows = torch.arange(x.shape[0], device=x.device)
    if pool_type == "argmax":
        # The end-of-text token has the largest id in CLIP's vocabulary.
        return x[rows, token_ids.argmax(dim=-1)]
    if pool_type == "eos":
        if eos_id is None:
            raise ValueError("text pool type 'eos' needs the tower's eos_id, which is missing")
        return x[rows, (token_ids == eos_id).int().argmax(dim=-1)]
    if pool_type == "first":
        return x[:, 0]
    if pool_type == "last":
        return x[:, -1]
    raise NotImplementedError(f"text pool type {pool_type!r} is not supported; expected argmax, eos, first or last")


def _is_causal(mask: torch.Tensor | None, length: int) -> bool:
    """Tell whether ``mask`` is the additive causal mask (−inf strictly above the diagonal)."""
    if mask is None or mask.shape != (length, length):
        return False
    above_diagonal = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu(1)
    blocked = mask if mask.dtype == torch.bool else torch.isneginf(mask)
    return bool(torch.equal(blocked, above_diagonal))


def _active_context_length(parts: TextTowerParts, token_ids: torch.Tensor) -> int:
    """Return how many leading token positions the pooled features depend on."""
    length = token_ids.shape[1]
    if not _is_causal(parts.attn_mask, length) or parts.pool_type not in ("argmax", "eos"):
        return length
    if parts.pool_type == "eos" and parts.eos_id is not None:
        pooled = (token_ids == parts.eos_id).int().argmax(dim=-1)
    else:
        pooled = token_ids.argmax(dim=-1)
    return int(pooled.max()) + 1


class PromptLearner(nn.Module):
    r"""Learned CoOp context vectors for all classes, with the frozen open_clip text tower.

    Only ``context_vectors`` is a parameter. The CLIP model is frozen (``requires_grad=False`` on
    every parameter, eval mode) when the learner is built, and it is kept outside the module's
    registered children, so ``state_dict()`` contains the context vectors alone and a
    ``DistributedDataParallel`` wrapper synchronises nothing else. The learner computes on the
    model's device; move the model before building the learner.

    Args:
        model: an open_clip ``CLIP`` or ``CustomTextCLIP`` with an open_clip text transformer.
        tokenizer: the model's open_clip tokenizer (callable on a list of strings).
        class_names: one name per class; the prompt is ``"<context> {name}."``.
        n_ctx: number of context vectors for random initialisation.
        ctx_init: a phrase such as ``"a photo of a"`` to initialise the context from its token
            embeddings (then ``n_ctx`` is the phrase's token count), or ``None`` for
            :math:`\mathcal N(0, 0.02^2)` initialisation.
        class_specific: learn one context per class instead of one shared context.
        seed: seed of the random initialisation (a private generator; global RNG untouched).
        context_vectors: initial values of the context vectors, e.g. saved ones, in place of the
            phrase or random initialisation; their shape must match ``n_ctx`` (or the phrase's
            token count), ``class_specific`` and the text tower's width.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        class_names: Sequence[str],
        n_ctx: int = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
        seed: int = 0,
        context_vectors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        class_names = [str(name).replace("_", " ") for name in class_names]
        if not class_names:
            raise ValueError("class_names is empty; pass one name per class")
        if ctx_init is None and n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")

        parts = text_tower_parts(model)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        # Plain attributes, not submodules: see the class docstring.
        self._frozen = (model, parts)

        self.class_names = list(class_names)
        self.class_specific = bool(class_specific)
        self.ctx_init = ctx_init.strip() if ctx_init else None

        embedding = parts.token_embedding
        device = embedding.weight.device
        cast_dtype = self._cast_dtype()
        context_text = self.ctx_init if self.ctx_init else " ".join([PLACEHOLDER_TOKEN] * n_ctx)
        start, context_ids = self._locate_context_tokens(tokenizer, context_text)
        if self.ctx_init is None and len(context_ids) != n_ctx:
            raise ValueError(
                f"the tokenizer splits {n_ctx} placeholder words {PLACEHOLDER_TOKEN!r} into {len(context_ids)} "
                "tokens; this tokenizer is not supported with random initialisation, pass ctx_init instead"
            )
        self.n_ctx = len(context_ids)

        token_ids = tokenizer([f"{context_text} {name}." for name in self.class_names]).to(device)
        expected = torch.tensor(context_ids, device=device)
        mismatched = [
            name for name, row in zip(self.class_names, token_ids) if not torch.equal(row[start : start + self.n_ctx], expected)
        ]
        if mismatched:
            raise ValueError(
                f"the context {context_text!r} tokenises differently when followed by the class names "
                f"{mismatched[:5]}; choose another ctx_init phrase"
            )
        if token_ids.shape[1] != parts.context_length:
            raise ValueError(
                f"tokenizer output length {token_ids.shape[1]} differs from the text tower's context length "
                f"{parts.context_length}; pass the tokenizer that belongs to this model"
            )
        pad_id = parts.pad_id if parts.pad_id is not None else 0
        truncated = [name for name, row in zip(self.class_names, token_ids) if bool((row != pad_id).all())]
        if truncated:
            logger.warning("prompts for classes %s fill the whole context and may be truncated", truncated[:5])

        with torch.no_grad():
            embedded = embedding(token_ids).to(cast_dtype)
            if self.ctx_init:
                initial = embedding(expected).float()
                if self.class_specific:
                    initial = initial.unsqueeze(0).repeat(len(self.class_names), 1, 1)
            else:
                shape = (len(self.class_names), self.n_ctx, embedding.embedding_dim) if self.class_specific else (self.n_ctx, embedding.embedding_dim)
                generator = torch.Generator().manual_seed(seed)
                initial = torch.randn(shape, generator=generator) * 0.02
        if context_vectors is not None:
            if tuple(context_vectors.shape) != tuple(initial.shape):
                raise ValueError(
                    f"context_vectors has shape {tuple(context_vectors.shape)}, but {len(self.class_names)} classes "
                    f"with n_ctx={self.n_ctx}, class_specific={self.class_specific} and context width "
                    f"{embedding.embedding_dim} need shape {tuple(initial.shape)}"
                )
            initial = context_vectors.detach().float()

        # Under a causal mask the pooled token attends to no later position, so the padding after the
        # last pooled token can be dropped exactly. This cuts the text tower's cost by about 77 / L.
        self.active_length = _active_context_length(parts, token_ids)
        token_ids = token_ids[:, : self.active_length]
        embedded = embedded[:, : self.active_length]

        self.context_vectors = nn.Parameter(initial.to(device=device, dtype=torch.float32).clone())
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("token_prefix", embedded[:, :start].clone(), persistent=False)
        self.register_buffer("token_suffix", embedded[:, start + self.n_ctx :].clone(), persistent=False)
        if context_vectors is not None:
            origin = "given values"
        elif self.ctx_init:
            origin = f"initialised from {self.ctx_init!r}"
        else:
            origin = f"N(0, 0.02^2) seed {seed}"
        logger.info(
            "prompt learner: %d classes, %d context vectors (%s, %s), context width %d, %d of %d token positions",
            len(self.class_names),
            self.n_ctx,
            "class-specific" if self.class_specific else "generic",
            origin,
            embedding.embedding_dim,
            self.active_length,
            parts.context_length,
        )

    @property
    def clip_model(self) -> nn.Module:
        """The frozen open_clip model whose text tower the learner runs."""
        return self._frozen[0]

    def _cast_dtype(self) -> torch.dtype:
        transformer = self._frozen[1].transformer
        if hasattr(transformer, "get_cast_dtype"):
            return transformer.get_cast_dtype()
        return self._frozen[1].token_embedding.weight.dtype

    def _locate_context_tokens(
        self, tokenizer: Callable[[Sequence[str]], torch.Tensor], context_text: str
    ) -> tuple[int, list[int]]:
        """Return the first position of the context tokens and their ids, found against an empty prompt."""
        empty, with_context = tokenizer(["", context_text])
        differs = (empty != with_context).nonzero()
        if differs.numel() == 0:
            raise ValueError(f"the context {context_text!r} produces no tokens")
        start = int(differs[0])
        pad_id = self._frozen[1].pad_id if self._frozen[1].pad_id is not None else 0
        count = int((with_context != pad_id).sum() - (empty != pad_id).sum())
        return start, with_context[start : start + count].tolist()

    def prompt_embeddings(self) -> torch.Tensor:
        """Return the ``K × L × D`` token embeddings of all prompts with the current context."""
        context = self.context_vectors.to(self.token_prefix.dtype)
        if context.dim() == 2:
            context = context.unsqueeze(0).expand(len(self.class_names), -1, -1)
        return torch.cat([self.token_prefix, context, self.token_suffix], dim=1)

    def _attention_mask(self, dtype: torch.dtype) -> torch.Tensor | None:
        parts = self._frozen[1]
        mask = parts.attn_mask
        if mask is not None:
            mask = mask[: self.active_length, : self.active_length].to(dtype)
        if not parts.use_pad_mask:
            return mask
        keep = (self.token_ids != parts.pad_id).unsqueeze(1).expand(-1, self.token_ids.shape[1], -1)
        padding = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))
        padding = padding.repeat_interleave(parts.heads, 0)
        return padding if mask is None else mask.unsqueeze(0) + padding

    def forward(self) -> torch.Tensor:
        """Return the ``K × D`` normalised text features of all classes in one text-tower pass."""
        parts = self._frozen[1]
        x = self.prompt_embeddings()
        x = x + parts.positional_embedding[: self.active_length].to(x.dtype)
        x = parts.transformer(x, attn_mask=self._attention_mask(x.dtype))
        x = parts.ln_final(x)
        pooled = _pool_tokens(x, self.token_ids, parts.pool_type, parts.eos_id)
        projection = parts.text_projection
        if isinstance(projection, nn.Module):
            pooled = projection(pooled)
        elif projection is not None:
            pooled = pooled @ projection
        return F.normalize(pooled.float(), dim=-1)

    def extra_repr(self) -> str:
        return f"classes={len(self.class_names)}, n_ctx={self.n_ctx}, class_specific={self.class_specific}, ctx_init={self.ctx_init!r}"
