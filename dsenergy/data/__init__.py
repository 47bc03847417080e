"""Datasets: the embedded fashion-open benchmark, user-data layouts and K-shot splits."""

from dsenergy.data._arrays import ArrayImageDataset, array_sha256
from dsenergy.data.fashion_mnist import FASHION_MNIST_CLASSES, read_fashion_mnist, read_idx
from dsenergy.data.fashion_open import (
    FASHION_CLIPART_CLASSES,
    FASHION_CLIPART_COUNTS,
    FASHION_FAR_OOD_CLASSES,
    FASHION_ID_CLASSES,
    FASHION_NEAR_OOD_CLASSES,
    FASHION_OPEN_SPEC,
    fashion_open_counts,
    fashion_open_root,
    fashion_open_splits,
    load_fashion_open,
)
from dsenergy.data.folders import (
    IMAGE_EXTENSIONS,
    ImageFileDataset,
    check_class_names,
    csv_manifest_dataset,
    image_folder_dataset,
    ood_folder_dataset,
)
from dsenergy.data.kshot import draw_kshot, kshot_indices, kshot_path
from dsenergy.data.protocols import (
    IMAGENET_VARIANTS,
    DomainSplit,
    croft_setup1_classes,
    croft_setup2,
    imagenet_class_names,
    imagenet_dataset,
    imagenet_open_set,
    imagenet_templates,
    imagenet_variant,
    imagenet_wnids,
)
from dsenergy.data.shifts import COVARIATE_SHIFTS, SEVERITIES, apply_covariate_shift

__all__ = [
    "COVARIATE_SHIFTS",
    "FASHION_CLIPART_CLASSES",
    "FASHION_CLIPART_COUNTS",
    "FASHION_FAR_OOD_CLASSES",
    "FASHION_ID_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_NEAR_OOD_CLASSES",
    "FASHION_OPEN_SPEC",
    "IMAGENET_VARIANTS",
    "IMAGE_EXTENSIONS",
    "SEVERITIES",
    "ArrayImageDataset",
    "DomainSplit",
    "ImageFileDataset",
    "apply_covariate_shift",
    "array_sha256",
    "check_class_names",
    "croft_setup1_classes",
    "croft_setup2",
    "csv_manifest_dataset",
    "draw_kshot",
    "fashion_open_counts",
    "fashion_open_root",
    "fashion_open_splits",
    "image_folder_dataset",
    "imagenet_class_names",
    "imagenet_dataset",
    "imagenet_open_set",
    "imagenet_templates",
    "imagenet_variant",
    "imagenet_wnids",
    "kshot_indices",
    "kshot_path",
    "load_fashion_open",
    "ood_folder_dataset",
    "read_fashion_mnist",
    "read_idx",
]
