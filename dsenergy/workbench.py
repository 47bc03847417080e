"""The model, its zero-shot classifier and the benchmark splits, loaded the way the notebooks need them."""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import numpy as np
import torch

from dsenergy.models import build_zero_shot_classifier, load_clip, resolve_device

__all__ = ["Workbench"]

logger = logging.getLogger(__name__)

# ImageNet folder names: "n" and eight digits, e.g. n01440764.
_WNID = re.compile(r"n\d{8}")


class Workbench:
    """The model, its zero-shot classifier and the benchmark splits, as the notebooks use them.

    ``benchmark="fashion-open"`` reads the embedded benchmark (splits ``id_train``, ``id_test``,
    ``ood_near``, ``ood_far``, ``ood_clipart``, ``covariate/<shift>/<severity>``).
    ``benchmark="folders"`` reads your images under ``data_root``: ``id_train/<class>/``,
    ``id_test/<class>/`` and any other split as a path relative to ``data_root``. A split whose path
    starts with ``ood`` is read as OOD images (label -1, any depth), any other as class folders with
    the ID class names. ``id_test`` needs exactly the class folders of ``id_train``, while any other
    labelled split (a covariate split) may have folders for only some of the ID classes, as ImageNet-R
    or -A do; its labels still index all ID classes. ``folder_names`` are the class folders;
    ``class_names``, which the prompts use, are the same unless the folders are ImageNet wnids, which
    are replaced by open_clip's ImageNet class names.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        benchmark: str = "fashion-open",
        data_root: str | None = None,
        device: str = "auto",
        batch_size: int = 128,
    ) -> None:
        if benchmark not in ("fashion-open", "folders"):
            raise ValueError(f"benchmark must be 'fashion-open' or 'folders', got {benchmark!r}")
        if benchmark == "folders" and data_root is None:
            raise ValueError("benchmark 'folders' needs data_root, the folder holding id_train/ and id_test/")
        self.benchmark = benchmark
        self.data_root = data_root
        self.batch_size = batch_size
        self._datasets: dict[str, Any] = {}
        self.device = resolve_device(device)
        self.bundle = load_clip(model, pretrained, device=self.device)
        self.folder_names = self._folder_names()
        self.class_names = self._prompt_names(self.folder_names)
        self.classifier = build_zero_shot_classifier(self.bundle, self.class_names, self._templates())
        logger.info("workbench: model %s (%s), %d classes, τ = %.4g, device %s", model, self.bundle.weights_id,
                    len(self.class_names), self.temperature, self.device)

    @property
    def temperature(self) -> float:
        """The model's own temperature τ = 1 / logit_scale."""
        return self.classifier.temperature

    def _folder_names(self) -> list[str]:
        if self.benchmark == "fashion-open":
            from dsenergy.data.fashion_open import FASHION_ID_CLASSES

            return list(FASHION_ID_CLASSES)
        return list(self.dataset("id_train").class_names)

    def _prompt_names(self, folder_names: list[str]) -> list[str]:
        """Return the class names that prompts use: open_clip's ImageNet names for wnid folders, else the folder names."""
        if not folder_names or not all(_WNID.fullmatch(name) for name in folder_names):
            return list(folder_names)
        from dsenergy.data.protocols import imagenet_class_names, imagenet_wnids

        try:
            position = {wnid: index for index, wnid in enumerate(imagenet_wnids())}
        except ValueError as error:
            logger.warning("class folders look like ImageNet wnids, but their names are unknown (%s); "
                           "prompts use the folder names", error)
            return list(folder_names)
        unknown = [name for name in folder_names if name not in position]
        if unknown:
            logger.warning("class folders look like ImageNet wnids, but %d are not ImageNet-1k wnids (e.g. %s); "
                           "prompts use the folder names", len(unknown), unknown[:3])
            return list(folder_names)
        names = imagenet_class_names()
        logger.info("class folders are ImageNet wnids; prompts use open_clip's ImageNet class names")
        return [names[position[name]] for name in folder_names]

    def _templates(self) -> list[Any]:
        from dsenergy.demo import DEMO_MODEL_NAME, DEMO_TEMPLATES

        if self.bundle.name == DEMO_MODEL_NAME:
            return list(DEMO_TEMPLATES)
        from dsenergy.data.protocols import imagenet_templates

        return imagenet_templates()

    def dataset(self, split: str) -> Any:
        """Return the dataset of ``split`` (PIL images and labels; -1 for OOD images)."""
        if split in self._datasets:
            return self._datasets[split]
        if self.benchmark == "fashion-open":
            from dsenergy.data.fashion_open import load_fashion_open

            dataset = load_fashion_open(split)
        else:
            from pathlib import Path

            from dsenergy.data.folders import image_folder_dataset, ood_folder_dataset

            root = Path(self.data_root) / split
            if not root.is_dir():
                raise FileNotFoundError(f"split folder {root} not found; with benchmark 'folders' every split is a "
                                        f"folder under data_root {self.data_root}")
            name = f"folders:{Path(self.data_root).name}/{split}"
            # Executed notebooks would keep every tqdm refresh of the verify bar as output.
            if split.startswith("ood"):
                dataset = ood_folder_dataset(root, name=name, progress=False)
            elif split == "id_train":
                dataset = image_folder_dataset(root, name=name, progress=False)
            elif split == "id_test":
                dataset = image_folder_dataset(root, class_names=self.folder_names, name=name, progress=False)
            else:
                dataset = image_folder_dataset(root, class_names=self.folder_names, name=name, progress=False,
                                               allow_missing_classes=True)
        self._datasets[split] = dataset
        return dataset

    def features(self, split: str, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (N×D normalised image features, N labels) of ``split``, at most ``n`` images drawn with ``seed``.

        Features come from the disk cache (:func:`dsenergy.features.cached_features`) when present.
        """
        from torch.utils.data import Subset

        from dsenergy.features import cached_features

        dataset = self.dataset(split)
        subset: Any = dataset
        dataset_id = f"{dataset.identity}"
        if n is not None and n < len(dataset):
            indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
            subset = Subset(dataset, indices.tolist())
            dataset_id += f"/sample-{n}-seed{seed}"
        features, labels = cached_features(self.bundle, subset, dataset_id=dataset_id, return_labels=True,
                                           batch_size=self.batch_size, progress=False)
        if labels is None:
            labels = torch.full((len(subset),), -1)
        return features, labels.long()

    def kshot_features(self, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the features and labels of a K-shot draw from ``id_train`` (the split is file-cached per seed)."""
        from torch.utils.data import Subset

        from dsenergy.data.kshot import kshot_indices
        from dsenergy.features import cached_features

        dataset = self.dataset("id_train")
        indices = kshot_indices(np.asarray(dataset.labels), shots, seed, dataset.identity)
        subset = Subset(dataset, [int(index) for index in indices])
        features, labels = cached_features(self.bundle, subset, dataset_id=f"{dataset.identity}/kshot-{shots}-seed{seed}",
                                           return_labels=True, batch_size=self.batch_size, progress=False)
        return features, labels.long()

    def similarities(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Return N×K cosine similarities to the zero-shot class features (or to ``text_features``)."""
        text = self.classifier.text_features if text_features is None else text_features
        text = torch.nn.functional.normalize(text.detach().float().cpu(), dim=1)
        return torch.nn.functional.normalize(features.float().cpu(), dim=1) @ text.T

    def test_splits(self, splits: Sequence[str], n: int | None, seed: int = 0) -> dict[str, Any]:
        """Return split -> ``(features, labels)`` (ID and covariate) or features (OOD), for ``evaluate.evaluate_model``."""
        result: dict[str, Any] = {}
        for split in splits:
            features, labels = self.features(split, n, seed)
            result[split] = features if split.startswith("ood") else (features, labels)
        return result

    def train(self, method: str, shots: int, seed: int, **config: Any) -> Any:
        """Train CoOp (``"coop"``) or CoOp+EBM (``"coop_ebm"``) on a K-shot draw of ``id_train`` features.

        ``config`` contains further :class:`dsenergy.train.TrainConfig` fields (``epochs``, ``n_ctx``,
        ``lr``, ``ebm_weight``, ``top_c``, ``crop_value``, ``bound``, ``temperature``). Returns the
        :class:`dsenergy.train.TrainResult`.
        """
        from dsenergy.train import TrainConfig, train_prompts

        features, labels = self.kshot_features(shots, seed)
        settings = TrainConfig(method=method, seed=seed, progress=False, **config)
        return train_prompts(self.bundle, self.class_names, (features, labels), settings)
