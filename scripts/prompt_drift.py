"""How far tuned prompts moved from the zero-shot classifier: cosine of each class's text features.

The script reads every prompt learner that ``scripts/finetune_table.py`` saved under ``--prompts``
(``<method>-seed<s>.pt``) and compares its class text features with the zero-shot class features of the
same model. The zero-shot features average the demo model's 18 training templates, or open_clip's
ImageNet templates for another model. A cosine of 1 for every class means the tuned classifier is the
zero-shot one.

Outputs under ``--out`` (default: the folder above ``--prompts``): ``prompt_drift.csv`` and
``prompt_drift.md``, one row per saved prompt learner with the smallest and mean cosine over classes
and the norm of its context vectors.

Run: ``python scripts/prompt_drift.py --prompts results/finetune-lr0.0002/prompts``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from dsenergy._atomic import write_text_atomically
from dsenergy.data.fashion_open import FASHION_ID_CLASSES
from dsenergy.demo import DEMO_MODEL_NAME, DEMO_TEMPLATES
from dsenergy.models import build_zero_shot_classifier, load_clip
from dsenergy.train import load_prompt_learner

logger = logging.getLogger("prompt_drift")

PROMPTS_SOURCE = (
    "scripts/finetune_table.py writes <method>-seed<s>.pt files to the prompts folder under its --out "
    "(default results/finetune/prompts)"
)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prompts", required=True,
        help="folder of saved prompt learners named <method>-seed<s>.pt, as scripts/finetune_table.py writes them",
    )
    parser.add_argument(
        "--model", default=DEMO_MODEL_NAME, help="open_clip model name the prompts were trained on (default: %(default)s)"
    )
    parser.add_argument(
        "--pretrained", default=None,
        help="open_clip tag or checkpoint file of that model (default: the model's own; the demo model loads its "
        "committed checkpoint)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: the folder above --prompts)")
    return parser


def drift_table(prompt_files: Sequence[Path], bundle, class_names: Sequence[str], templates: Sequence) -> pd.DataFrame:
    """Return one row per prompt file: smallest and mean cosine to the zero-shot class features, context norm."""
    zero_shot = F.normalize(build_zero_shot_classifier(bundle, class_names, list(templates)).text_features.float(), dim=-1)
    rows = []
    for path in prompt_files:
        learner = load_prompt_learner(path, bundle)
        if list(learner.class_names) != list(class_names):
            raise ValueError(f"{path} was trained on classes {list(learner.class_names)}, not {list(class_names)}")
        with torch.no_grad():
            tuned = F.normalize(learner().float(), dim=-1)
            cosines = (tuned * zero_shot).sum(dim=1)
            context_norm = float(learner.context_vectors.norm())
        method, _, seed = path.stem.rpartition("-seed")
        rows.append({
            "prompts": path.stem, "method": method, "seed": int(seed) if seed.isdigit() else seed,
            "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()), "context_norm": context_norm,
        })
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Build the table, write it under ``--out`` and return it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    prompts = Path(args.prompts)
    if not prompts.is_dir():
        state = "is a file" if prompts.exists() else "does not exist"
        parser.error(f"--prompts {prompts} {state}; pass a folder of <method>-seed<s>.pt prompt files. {PROMPTS_SOURCE}")
    files = sorted(prompts.glob("*-seed*.pt"))
    if not files:
        parser.error(f"--prompts {prompts} contains no <method>-seed<s>.pt prompt files; {PROMPTS_SOURCE}")

    bundle = load_clip(args.model, args.pretrained)
    if args.model == DEMO_MODEL_NAME:
        templates = DEMO_TEMPLATES
    else:
        from dsenergy.data.protocols import imagenet_templates

        templates = imagenet_templates()
    try:
        table = drift_table(files, bundle, FASHION_ID_CLASSES, templates)
    except ValueError as error:
        # The prompt files do not fit the model from --model / --pretrained, or are no saved prompt learners.
        parser.error(f"--prompts: {error}")

    out = Path(args.out) if args.out else prompts.parent
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "prompt_drift.csv", table.to_csv(index=False))
    lines = [
        "| prompts | min cosine | mean cosine | context norm |",
        "|---|---|---|---|",
        *(f"| {row.prompts} | {row.min_cosine:.4f} | {row.mean_cosine:.4f} | {row.context_norm:.2f} |" for row in table.itertuples()),
        "",
        f"Cosine between each class's tuned and zero-shot text features ({len(templates)} templates averaged), "
        f"over the {len(FASHION_ID_CLASSES)} fashion-open ID classes; model {args.model} ({bundle.weights_id}).",
        "",
    ]
    write_text_atomically(out / "prompt_drift.md", "\n".join(lines))
    logger.info("Wrote %s and %s (%d prompt learners)", out / "prompt_drift.csv", out / "prompt_drift.md", len(table))
    return table


if __name__ == "__main__":
    main()
