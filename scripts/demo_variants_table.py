"""Model-card numbers of demo models trained on different class sets and seeds, side by side.

Each model is a checkpoint's ``<stem>.training.json`` and ``<stem>.evaluation.json``, written by
``python -m dsenergy.demo train`` and ``python -m dsenergy.demo evaluate``. By default the table
lists the committed demo model (``data/models/``) and every model under ``results/demo-variants/``,
made with::

    python -m dsenergy.demo train --classes id --epochs 15 --seed 0 --threads 2 \\
        --out results/demo-variants/id-seed0/dsenergy-demo-id-seed0.pt
    python -m dsenergy.demo evaluate --checkpoint results/demo-variants/id-seed0/dsenergy-demo-id-seed0.pt \\
        --card results/demo-variants/id-seed0/MODEL_CARD.md

(likewise ``id-seed1`` and ``all-seed1``). The checkpoints themselves are not committed; the
records hold their sha256.

Per model: the training classes, seed, epochs, zero-shot ID accuracy, τ, and per OOD split the
AUROC (ID positive) of MSP, Energy and ΔEnergy (c = 1, a = 0, model τ), ΔEnergy − Energy, and the
mean top cosine similarity of the split's images to the ID class prompts where the record has it.
A model's two records must lie side by side, as ``train`` and ``evaluate`` write them; a model
whose name repeats across folders is shown as ``<folder>/<name>``. Outputs under ``--out`` (default
``results/demo-variants/``): ``demo_variants.csv`` and ``demo_variants.md``.

Run: ``python scripts/demo_variants_table.py [--models DIR_OR_JSON ...] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from dsenergy._atomic import write_text_atomically
from dsenergy.data.fashion_mnist import FASHION_MNIST_CLASSES

REPO_ROOT = Path(__file__).resolve().parent.parent
SCORES = {"MSP": "MSP", "Energy": "Energy", "ΔE": "ΔEnergy (c=1, a=0)"}
SPLIT_NAMES = {"ood_near": "near", "ood_far": "textures", "ood_clipart": "clip art"}

logger = logging.getLogger("demo_variants_table")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=None,
        help="evaluation records (*.evaluation.json) or folders containing them "
        "(default: data/models and every folder under results/demo-variants)",
    )
    parser.add_argument(
        "--out", default=None,
        help="output folder (default: results/demo-variants, only when --models is not given, so the "
        "committed table is not replaced by a partial one)",
    )
    return parser


def find_evaluation_records(paths: Sequence[str | Path]) -> list[Path]:
    """Return the ``*.evaluation.json`` files named by ``paths`` (files, or folders searched one level deep)."""
    records: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            if not path.name.endswith(".evaluation.json"):
                raise ValueError(f"{path} is not an evaluation record; pass a *.evaluation.json file or the folder containing it")
            records.append(path)
        elif path.is_dir():
            records.extend(sorted(path.glob("*.evaluation.json")))
        else:
            raise FileNotFoundError(f"{path} is neither an evaluation record nor a folder; pass *.evaluation.json files or folders")
    resolved = [path.resolve() for path in records]
    duplicates = sorted({str(path) for path, key in zip(records, resolved) if resolved.count(key) > 1})
    if duplicates:
        raise ValueError(f"{duplicates} named more than once in --models; name each record once")
    if not records:
        raise FileNotFoundError(
            f"no *.evaluation.json under {[str(path) for path in paths]}; "
            "write them with `python -m dsenergy.demo evaluate --checkpoint PATH`"
        )
    return records


def default_model_paths() -> list[Path]:
    """Return the committed demo model's folder and every folder under ``results/demo-variants``."""
    variants = REPO_ROOT / "results" / "demo-variants"
    folders = sorted(path for path in variants.iterdir() if path.is_dir()) if variants.is_dir() else []
    if not folders:
        logger.warning("no model folders under %s; the table lists the committed demo model only", variants)
    return [REPO_ROOT / "data" / "models", *folders]


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); write it again with python -m dsenergy.demo") from None


def model_row(evaluation_path: Path) -> dict[str, Any]:
    """Return one table row from an evaluation record and the training record beside it."""
    stem = evaluation_path.name[: -len(".evaluation.json")]
    training_path = evaluation_path.with_name(f"{stem}.training.json")
    if not training_path.is_file():
        raise FileNotFoundError(f"{training_path} not found beside {evaluation_path}; it is written by `python -m dsenergy.demo train`")
    evaluation, training = _read_record(evaluation_path), _read_record(training_path)
    for path, record, keys in (
        (evaluation_path, evaluation, ("weights_id", "id_test_accuracy", "temperature", "ood")),
        (training_path, training, ("sha256", "seed", "config")),
    ):
        missing = [key for key in keys if key not in record]
        if missing:
            raise ValueError(f"{path} lacks {missing}; write it again with python -m dsenergy.demo")
    if evaluation["weights_id"] != f"sha256:{training['sha256']}":
        raise ValueError(
            f"{evaluation_path} evaluates {evaluation['weights_id']} but {training_path} trained sha256:{training['sha256']}; "
            "evaluate the checkpoint again"
        )

    # Records written before the class choice existed come from runs on all ten classes.
    classes = training.get("train_classes", list(FASHION_MNIST_CLASSES))
    row: dict[str, Any] = {
        "model": stem,
        "train_classes": "all 10" if len(classes) == len(FASHION_MNIST_CLASSES) else f"{len(classes)} ID",
        "seed": training["seed"],
        "epochs": training["config"]["epochs"],
        "id_accuracy": evaluation["id_test_accuracy"],
        "temperature": evaluation["temperature"],
    }
    cosines = evaluation.get("mean_max_cosine", {})
    row["mean_max_cosine_id"] = cosines.get("id_test", float("nan"))
    for split, numbers in evaluation["ood"].items():
        name = SPLIT_NAMES.get(split, split)
        for short, key in SCORES.items():
            row[f"{name} {short}"] = numbers[key]["auroc"]
        row[f"{name} ΔE − Energy"] = numbers[SCORES["ΔE"]]["auroc"] - numbers[SCORES["Energy"]]["auroc"]
        row[f"mean_max_cosine_{name}"] = cosines.get(split, float("nan"))
    return row


def markdown(table: pd.DataFrame) -> str:
    """Return the table as markdown: one block of AUROCs per OOD split, then the mean top cosines."""
    splits = [name for name in SPLIT_NAMES.values() if f"{name} ΔE" in table.columns]
    header = "| model | classes | seed | ID acc. | τ | " + " | ".join(
        f"{name}: MSP / Energy / ΔE (ΔE − Energy)" for name in splits
    ) + " |"
    lines = [header, "|" + "---|" * (5 + len(splits))]
    for _, values in table.iterrows():
        cells = [
            f"`{values['model']}`", values["train_classes"], str(values["seed"]),
            f"{values['id_accuracy']:.4f}", f"{values['temperature']:.4f}",
        ]
        for name in splits:
            cells.append(
                f"{values[f'{name} MSP']:.4f} / {values[f'{name} Energy']:.4f} / {values[f'{name} ΔE']:.4f} "
                f"({values[f'{name} ΔE − Energy']:+.4f})"
            )
        lines.append("| " + " | ".join(cells) + " |")

    cosine_columns = ["mean_max_cosine_id", *(f"mean_max_cosine_{name}" for name in splits)]
    if table[cosine_columns].notna().any().any():
        lines += [
            "",
            "Mean top cosine similarity of each split's images to the six ID class prompts:",
            "",
            "| model | ID | " + " | ".join(splits) + " |",
            "|" + "---|" * (2 + len(splits)),
        ]
        for _, values in table.iterrows():
            cells = ["n/a" if pd.isna(values[column]) else f"{values[column]:.3f}" for column in cosine_columns]
            lines.append(f"| `{values['model']}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "AUROC with ID as the positive class; every score at the model's own τ; ΔE with c = 1, a = 0.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Build the table, write it under ``--out`` and return it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.models and args.out is None:
        parser.error("--models needs --out DIR; the default folder contains the table of the default models")
    out = Path(args.out) if args.out is not None else REPO_ROOT / "results" / "demo-variants"
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is an existing file; choose a folder path (it is created if missing)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    records = find_evaluation_records(args.models if args.models else default_model_paths())
    rows = [model_row(path) for path in records]
    # Checkpoints of the same file name in different folders get their folder name in front.
    names = [row["model"] for row in rows]
    for row, path in zip(rows, records):
        if names.count(row["model"]) > 1:
            row["model"] = f"{path.parent.name}/{row['model']}"
    table = pd.DataFrame(rows)

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "demo_variants.csv", table.to_csv(index=False))
    write_text_atomically(out / "demo_variants.md", markdown(table))
    logger.info("Wrote %s and %s, one row per model (%d rows)", out / "demo_variants.csv", out / "demo_variants.md", len(table))
    return table


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
