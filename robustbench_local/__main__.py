r"""Command line: ``python -m robustbench_local {leaderboard,benchmark} ...``.

Examples:
    python -m robustbench_local leaderboard --dir leaderboard --dataset mnist --markdown
    python -m robustbench_local benchmark --checkpoint model.pt --dataset mnist --eps 0.3 \\
        --n-examples 1000 --out leaderboard/
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import robustbench_local.distributed as distributed
from robustbench_local.benchmark import benchmark
from robustbench_local.card import THREAT_MODELS
from robustbench_local.leaderboard import (
    LEADERBOARD_ENV,
    Leaderboard,
    default_leaderboard_dir,
    summary,
)
from robustbench_local.models import load_checkpoint


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m robustbench_local",
        description="Local robustness benchmark: evaluate checkpoints, show the leaderboard.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and checks")
    sub = p.add_subparsers(dest="command", required=True)

    lb = sub.add_parser("leaderboard", help="print the leaderboard of a track")
    lb.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"folder of model-card JSON files (default ${LEADERBOARD_ENV} or ./leaderboard)",
    )
    lb.add_argument("--dataset", default="mnist")
    lb.add_argument("--threat-model", default="linf", choices=THREAT_MODELS)
    lb.add_argument("--eps", type=float, default=None, help="only cards at this eps")
    lb.add_argument("--no-reference", action="store_true", help="hide the published rows")
    lb.add_argument("--markdown", action="store_true", help="print Markdown instead of text")
    lb.add_argument("--html", type=Path, default=None, help="also write an HTML page here")

    bm = sub.add_parser("benchmark", help="evaluate a checkpoint and write its model card")
    bm.add_argument("--checkpoint", type=Path, required=True, help="a save_checkpoint file")
    bm.add_argument("--dataset", default="mnist")
    bm.add_argument("--threat-model", default="linf", choices=THREAT_MODELS)
    bm.add_argument("--eps", type=float, default=0.3)
    bm.add_argument("--n-examples", type=int, default=1000)
    bm.add_argument("--name", default=None, help="card name (default: arch and digest)")
    bm.add_argument("--reported", type=float, default=None, help="paper's robust accuracy, %%")
    bm.add_argument("--data-dir", default=None, help="dataset mirror folder")
    bm.add_argument("--batch-size", type=int, default=500)
    bm.add_argument("--seed", type=int, default=0)
    bm.add_argument("--device", default=None)
    bm.add_argument(
        "--steps", type=int, default=100, help="APGD and FAB iterations (100 = standard suite)"
    )
    bm.add_argument(
        "--n-target-classes", type=int, default=9, help="APGD-T/FAB-T targets (9 = standard)"
    )
    bm.add_argument(
        "--square-queries", type=int, default=5000, help="Square queries (5000 = standard)"
    )
    bm.add_argument(
        "--out", type=Path, default=None, help="leaderboard folder for the card (default: --dir)"
    )
    return p


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
    model = load_checkpoint(args.checkpoint, map_location=args.device or "cpu").eval()
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
        device=args.device,
        reported=args.reported,
        steps=args.steps,
        n_target_classes=args.n_target_classes,
        square_queries=args.square_queries,
        progress=args.verbose,
    )
    if not distributed.is_main():  # under torchrun every rank has the same card; rank 0 writes
        return 0
    out = card.save(args.out or default_leaderboard_dir())
    print(summary(card))
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input, with the reason on stderr)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return _leaderboard(args) if args.command == "leaderboard" else _benchmark(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
