"""The ``dsenergy`` command: run the notebook sequence and list its parameters."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from dsenergy.params import NOTEBOOKS, SCHEMA, ParameterError, parse_cli_value

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


#: Parameters that `dsenergy run` sets from one of its options rather than from -p.
_SET_BY_RUN_OPTION = {"output_dir": "--out"}


def _positive_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, got {text!r}") from None
    if value <= 0:
        # papermill and nbclient treat 0 and negative timeouts as no limit, which a typo should not select.
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, got {value}; leave out --cell-timeout for no limit"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``dsenergy`` command."""
    parser = argparse.ArgumentParser(
        prog="dsenergy",
        description="ΔEnergy OOD detection and EBM prompt tuning for CLIP-like models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="execute the notebook sequence with papermill",
        description=(
            "Execute the notebooks " + ", ".join(NOTEBOOKS) + " with papermill. Writes the executed "
            "notebooks, their HTML exports, one records JSON per notebook, results.json and results.md "
            "into --out. Parameters apply in the order: notebook defaults, --smoke values, --params file, "
            "-p values. List them with `dsenergy params`."
        ),
    )
    run.add_argument("--params", metavar="FILE.yaml", help="YAML file mapping parameter names to values")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                     help="set one parameter; VALUE is parsed as YAML (3, 0.5, [1, 2], null, ViT-B-32)")
    run.add_argument("--only", metavar="LIST", help="comma-separated notebook numbers or names, e.g. 01,03")
    run.add_argument("--out", default="dsenergy-run", metavar="DIR",
                     help="output folder (default: %(default)s)")
    run.add_argument("--smoke", action="store_true",
                     help="CI size: small splits, few shots and epochs, 2 seeds")
    run.add_argument("--kernel", metavar="NAME", help="Jupyter kernel name (default: this Python's python3)")
    run.add_argument("--no-html", action="store_true", help="skip the HTML exports")
    run.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    run.add_argument("--cell-timeout", type=_positive_seconds, metavar="SECONDS",
                     help="time limit per cell in seconds, a positive integer (default: no limit)")
    run.add_argument("--no-progress", action="store_true", help="hide the per-cell progress bar")

    params = commands.add_parser("params", help="list the notebook parameters with defaults and smoke values")
    params.add_argument("--notebook", metavar="NAME", help="only the parameters of this notebook (e.g. 02)")
    return parser


def _collect_parameters(args: argparse.Namespace) -> dict:
    from dsenergy.runner import load_parameters_file

    values = load_parameters_file(args.params) if args.params else {}
    for key, text in args.parameter:
        values[key] = parse_cli_value(text)
    return values


def _command_run(args: argparse.Namespace) -> int:
    from dsenergy.runner import NotebookExecutionError, run_notebooks

    try:
        run = run_notebooks(
            _collect_parameters(args), only=args.only, out_dir=args.out, smoke=args.smoke,
            kernel_name=args.kernel, html=not args.no_html, progress=not args.no_progress,
            keep_going=args.keep_going, cell_timeout=args.cell_timeout,
        )
    except ParameterError as error:
        logger.error("invalid parameters: %s", error)
        return 2
    except NotebookExecutionError as error:
        # The runner has already logged the failing notebook and cell.
        if error.result is not None and args.keep_going:
            logger.error("run finished with the failures above; results: %s", error.result.out_dir / "results.md")
        elif error.result is not None:
            logger.error("run stopped by the failure above; partial results: %s", error.result.out_dir / "results.md")
        else:
            logger.error("%s", error)
        return 1
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2

    logger.info("all %d notebook(s) ran in %.0f s; results in %s", len(run.notebooks), run.duration_s,
                run.out_dir / "results.md")
    return 0


def _command_params(args: argparse.Namespace) -> int:
    from dsenergy.params import notebook_parameters, resolve_notebooks

    if args.notebook:
        try:
            selected = resolve_notebooks(args.notebook, option="--notebook")
        except ParameterError as error:
            logger.error("%s", error)
            return 2
        if len(selected) > 1:
            logger.error("--notebook takes one notebook, got %r; run `dsenergy params` once per notebook, "
                         "or without --notebook for all parameters", args.notebook)
            return 2
        parameters = notebook_parameters(selected[0])
    else:
        parameters = list(SCHEMA.values())

    for parameter in parameters:
        smoke = f", smoke {parameter.smoke!r}" if parameter.has_smoke else ""
        used_by = ",".join(name.split("_", 1)[0] for name in parameter.notebooks)
        default = f"default {parameter.default!r}"
        if parameter.name in _SET_BY_RUN_OPTION:
            default = (f"set by `dsenergy run {_SET_BY_RUN_OPTION[parameter.name]}`, not -p; "
                       f"{default} when a notebook runs by hand")
        sys.stdout.write(f"{parameter.name} ({parameter.kind}, {default}{smoke}; "
                         f"notebooks {used_by})\n    {parameter.help}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dsenergy`` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        # papermill logs every input and output path twice, and nbconvert warns about missing
        # alt text on every figure. The runner's own progress lines report each notebook.
        logging.getLogger("papermill").setLevel(logging.WARNING)
        logging.getLogger("traitlets").setLevel(logging.ERROR)
    if args.command == "run":
        return _command_run(args)
    if args.command == "params":
        try:
            return _command_params(args)
        except BrokenPipeError:
            # The reader (e.g. `| head`) closed the pipe early; stop writing without a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
