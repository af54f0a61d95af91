r"""Command line: ``python -m robustbench_local {leaderboard,benchmark} ...``.

Examples:
    python -m robustbench_local leaderboard --dir leaderboard --dataset mnist --markdown
    python -m robustbench_local benchmark --checkpoint model.pt --dataset mnist --eps 0.3 \\
        --n-examples 1000 --out leaderboard/
    python -m robustbench_local benchmark --checkpoint net_state.pt --model mypkg.nets:Net \\
        --model-kwargs '{"width": 64}' --dataset my_pngs/ --wrap-logits logits

``python -m robustbench_local benchmark --help`` explains the model, data and default flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import robustbench_local.distributed as distributed
from robustbench_local.benchmark import (
    DEFAULT_N_EXAMPLES,
    SQUARE_QUERIES,
    STANDARD_STEPS,
    STANDARD_TARGETS,
    benchmark,
)
from robustbench_local.card import THREAT_MODELS
from robustbench_local.inputs import resolve_device
from robustbench_local.leaderboard import (
    LEADERBOARD_ENV,
    Leaderboard,
    default_leaderboard_dir,
    summary,
)
from robustbench_local.models.spec import model_from_checkpoint
from robustbench_local.tracks import check_track_threat_model

BENCHMARK_EPILOG = """\
model:
  --checkpoint is a save_checkpoint file or a plain torch.save(model.state_dict()) file. A
  checkpoint records its architecture; a plain state dict needs --model, a registered name
  (rbl.model_names(), rbl.register_model) or an import path mypkg.nets:Net (importable: run from
  your project or set PYTHONPATH), with --model-kwargs as one JSON object of its constructor's
  keyword arguments, e.g. --model-kwargs '{"width": 64}'. Nothing in the file is run.
  A model returning a dict, a tuple or an object with .logits: --wrap-logits logits (a key or
  attribute; an integer for a tuple index). A model expecting normalised inputs: --mean and
  --std per channel. A model expecting 0-255 pixels: --input-scale 255. (rbl.wrap_model.)

data:
  --dataset is any data spec: a registered name (mnist, cifar10, ...), a folder of images in
  class subfolders (root/<class>/*.png), an .npz or .pt file of arrays x, y, or
  module:function. 8-bit images are scaled to [0, 1] and channels-last arrays laid out NCHW
  (said once in the log). The card records a registered name, or the user data's name, sha256
  digest and origin, so the leaderboard ranks it only with cards of the same data.

defaults:
  The budget flags default to the standard suite's (rbl.standard_suite()): a card written
  with them is comparable on the leaderboard; any other value marks it "reduced". --eps
  defaults to the track's: mnist linf 0.3, cifar10 linf 8/255 and l2 0.5, and 8/255 (linf)
  or 0.5 (l2) for your own data. --n-examples defaults to 1000, or the whole test split when
  it is smaller. There is no l1 suite yet: --threat-model l1 says what to use instead.

certified and corruptions:
  --certify crown (ibp, milp; smoothing with --certify-settings '{"sigma": 0.25}' on an l2
  track) adds the certified accuracy at the track's eps on the same samples to the card;
  --corruptions auto (or shot_noise,fog,...) with --severities 1,2,3,4,5 (bench: each
  corruption's benchmark level) adds the mean accuracy under MNIST-C or CIFAR-10-C. The
  leaderboard shows them as the certified and corruptions columns.

example:
  python -m robustbench_local benchmark --checkpoint net_state.pt --model mypkg.nets:Net \\
      --model-kwargs '{"width": 64}' --dataset my_pngs/ --wrap-logits logits --out leaderboard/
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m robustbench_local",
        description="Local robustness benchmark: evaluate checkpoints, show the leaderboard.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and checks")
    sub = p.add_subparsers(dest="command", required=True)
    _leaderboard_parser(sub)
    _benchmark_parser(sub)
    return p


def _leaderboard_parser(sub: Any) -> None:
    lb = sub.add_parser(
        "leaderboard",
        help="print the leaderboard: one table per track (data, threat model, eps)",
        description="Model cards and the published reference rows, one ranked table per track "
        "(dataset, threat model, eps).",
    )
    lb.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"folder of model-card JSON files (default ${LEADERBOARD_ENV} or ./leaderboard)",
    )
    lb.add_argument(
        "--dataset", default=None, help="only this dataset (a name or a data digest prefix)"
    )
    lb.add_argument(
        "--threat-model", default=None, choices=THREAT_MODELS, help="only this threat model"
    )
    lb.add_argument("--eps", type=float, default=None, help="only cards at this eps")
    lb.add_argument("--no-reference", action="store_true", help="hide the published rows")
    lb.add_argument("--markdown", action="store_true", help="print Markdown instead of text")
    lb.add_argument("--html", type=Path, default=None, help="also write an HTML page here")


def _benchmark_parser(sub: Any) -> None:
    bm = sub.add_parser(
        "benchmark",
        help="evaluate a checkpoint with the standard suite and write its model card",
        description="Evaluate a model with the standard attack suite on a track and write its "
        "model card.",
        epilog=BENCHMARK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bm.add_argument(
        "--checkpoint", type=Path, required=True,
        help="a save_checkpoint file, or a plain state dict (then name --model)",
    )  # fmt: skip
    bm.add_argument(
        "--model", default=None, metavar="ARCH",
        help="architecture: a registered name or an import path mypkg.nets:Net",
    )  # fmt: skip
    bm.add_argument(
        "--model-kwargs", type=_json_object, default=None, metavar="JSON",
        help="the architecture's keyword arguments as one JSON object: '{\"width\": 64}'",
    )  # fmt: skip
    bm.add_argument(
        "--wrap-logits", type=_logits_key, default=None, metavar="KEY",
        help="where the logits are in the output: a dict key or attribute, or a tuple index",
    )  # fmt: skip
    bm.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean")
    bm.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std")
    bm.add_argument(
        "--input-scale", type=float, default=None, help="multiply inputs first (255: 0-255 model)"
    )
    bm.add_argument("--dataset", default="mnist", help="a data spec (see below; default mnist)")
    bm.add_argument(
        "--threat-model", default="linf", choices=(*THREAT_MODELS, "l1"),
        help="linf or l2 (l1: no suite yet)",
    )  # fmt: skip
    bm.add_argument("--eps", type=float, default=None, help="budget (default: the track's)")
    bm.add_argument(
        "--n-examples", type=int, default=None,
        help=f"test samples (default {DEFAULT_N_EXAMPLES}, or all of a smaller split)",
    )  # fmt: skip
    bm.add_argument("--name", default=None, help="card name (default: arch and digest)")
    bm.add_argument("--reported", type=float, default=None, help="paper's robust accuracy, %%")
    bm.add_argument("--data-dir", default=None, help="mirror of the registered datasets")
    bm.add_argument("--batch-size", type=int, default=500)
    bm.add_argument("--seed", type=int, default=0)
    bm.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default cpu)")
    bm.add_argument(
        "--steps", type=int, default=STANDARD_STEPS,
        help=f"APGD and FAB iterations (default {STANDARD_STEPS}, the suite's)",
    )  # fmt: skip
    bm.add_argument(
        "--n-target-classes", type=int, default=STANDARD_TARGETS,
        help=f"APGD-T and FAB-T targets (default {STANDARD_TARGETS}, the suite's)",
    )  # fmt: skip
    bm.add_argument(
        "--square-queries", type=int, default=SQUARE_QUERIES,
        help=f"Square queries (default {SQUARE_QUERIES}, the suite's)",
    )  # fmt: skip
    bm.add_argument(
        "--certify", default=None, metavar="METHOD",
        help="also certify the samples at the track's eps: ibp, crown, milp or smoothing",
    )  # fmt: skip
    bm.add_argument(
        "--certify-settings", type=_json_object, default=None, metavar="JSON",
        help="the method's settings as one JSON object, e.g. '{\"sigma\": 0.25, \"n\": 10000}'",
    )  # fmt: skip
    bm.add_argument(
        "--corruptions", type=_corruption_names, default=None, metavar="auto|NAME,...",
        help="also measure accuracy under common corruptions (MNIST-C or CIFAR-10-C)",
    )  # fmt: skip
    bm.add_argument(
        "--severities", type=_severities, default=(1, 2, 3, 4, 5), metavar="S,...",
        help="corruption severities 1-5 and bench (default 1,2,3,4,5)",
    )  # fmt: skip
    bm.add_argument(
        "--out", type=Path, default=None, help="leaderboard folder for the card (default: --dir)"
    )


def _json_object(text: str) -> dict[str, Any]:
    """``--model-kwargs``: one JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"not JSON ({err.msg}): write one object, e.g. '{{\"width\": 64}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"width\": 64}}', got {text!r}"
        )
    return value


def _corruption_names(text: str) -> str | list[str]:
    """``--corruptions``: ``auto`` or comma-separated names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give auto or names such as shot_noise,fog")
    return "auto" if names == ["auto"] else names


def _severities(text: str) -> tuple[int | None, ...]:
    """``--severities``: comma-separated 1-5 and ``bench`` (each corruption's benchmark level)."""
    out: list[int | None] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "bench":
            out.append(None)
        elif part in {"1", "2", "3", "4", "5"}:
            out.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"severities are 1-5 or bench, got {part!r}")
    return tuple(out)


def _certify_arg(args: argparse.Namespace) -> str | dict[str, Any] | None:
    """``--certify`` with ``--certify-settings`` as ``benchmark``'s ``certify`` argument.

    Raises:
        ValueError: Settings without a method.
    """
    if args.certify is None:
        if args.certify_settings:
            raise ValueError("--certify-settings needs --certify METHOD (e.g. --certify crown)")
        return None
    if not args.certify_settings:
        return args.certify
    return {"method": args.certify, **args.certify_settings}


def _logits_key(text: str) -> str | int:
    """``--wrap-logits``: a key or attribute name, or an integer tuple index."""
    return int(text) if text.lstrip("-").isdigit() else text


def _wrap_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``wrap_model`` settings the flags give (empty: no wrapping)."""
    given = {
        "logits": args.wrap_logits,
        "mean": args.mean,
        "std": args.std,
        "input_scale": args.input_scale,
    }
    return {k: v for k, v in given.items() if v is not None}


def _leaderboard(args: argparse.Namespace) -> int:
    board = Leaderboard.load(
        args.dir,
        args.dataset,
        args.threat_model,
        eps=args.eps,
        references=not args.no_reference,
    )
    print(board.to_markdown() if args.markdown else board.to_text())
    if args.html is not None:
        board.to_html(args.html)
        print(f"wrote {args.html}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    check_track_threat_model(args.threat_model)
    device = resolve_device(args.device)
    model = model_from_checkpoint(
        args.checkpoint, arch=args.model, arch_kwargs=args.model_kwargs,
        wrap=_wrap_settings(args), map_location=device,
    )  # fmt: skip
    card = benchmark(
        model,
        dataset=args.dataset,
        threat_model=args.threat_model,
        eps=args.eps,
        n_examples=args.n_examples,
        name=args.name,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        reported=args.reported,
        steps=args.steps,
        n_target_classes=args.n_target_classes,
        square_queries=args.square_queries,
        progress=args.verbose,
        certify=_certify_arg(args),
        corruptions=args.corruptions,
        severities=args.severities,
    )
    if not distributed.is_main():  # under torchrun every rank has the same card; rank 0 writes
        return 0
    out = card.save(args.out or default_leaderboard_dir())
    print(summary(card))
    if card.notes:
        print(f"  notes: {card.notes}")
    print(f"wrote {out}")
    return 0


DATA_LOGGERS = ("robustbench_local.data", "robustbench_local.inputs", "robustbench_local.tracks")
"""Loggers whose INFO lines (data conversions, defaults chosen) the CLI always shows."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input, with the reason on stderr)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    with _data_notes():
        try:
            return _leaderboard(args) if args.command == "leaderboard" else _benchmark(args)
        except (ValueError, FileNotFoundError, TypeError) as err:
            print(f"error: {err}{_flag_hint(str(err))}", file=sys.stderr)
            return 2


FLAG_HINTS = (
    ("wrap_model(", "--wrap-logits KEY, --mean M.. --std S.., --input-scale 255"),
    ("mean and std", "--mean M.. and --std S.., one value per channel"),
    ("arch=", "--model ARCH (a registered name or mypkg.nets:Net) and --model-kwargs JSON"),
    ("device=", "--device cpu, cuda:0 or auto"),
)
"""Library advice (keyword arguments) and the flags that do the same on the command line."""


def _flag_hint(message: str) -> str:
    """`` (on the command line: --flag ...)`` for advice naming a Python keyword, else ''."""
    flags = [flag for needle, flag in FLAG_HINTS if needle in message]
    return f" (on the command line: {'; '.join(flags)})" if flags else ""


@contextlib.contextmanager
def _data_notes() -> Iterator[None]:
    """Show the INFO lines of :data:`DATA_LOGGERS`; restore their levels afterwards."""
    loggers = [logging.getLogger(name) for name in DATA_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
