"""Benchmark tracks: the data a card was measured on, its threat model and its eps.

A track is what makes two model cards comparable. Its data is a registered dataset (named,
its files checksummed) or the user's own (any data spec of :func:`robustbench_local.load_dataset`,
or arrays and Datasets passed in memory), identified by the sha256 of its test split and
described by its origin. :func:`track_data` resolves a ``dataset=`` argument into a
:class:`TrackData`; :func:`track_eps` gives the track's eps when none is given;
:class:`Track` is a card's track, what the leaderboard groups rows by (one table per track).

Example:
    >>> data = track_data("my_images/")                  # a folder of PNGs in class folders
    >>> data.name, data.digest[:8], data.origin
    ('my_images', '3f0c9a1e', 'folder /home/me/my_images')
    >>> track_eps(data, "linf", None)                    # user data: the CIFAR-10 track's 8/255
    0.03137254901960784

References:
    Croce et al., "RobustBench: a standardized adversarial robustness benchmark",
    NeurIPS Datasets and Benchmarks 2021 (tracks: CIFAR-10 linf 8/255 and l2 0.5).
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (MNIST linf 0.3).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attacks.validation import check_number
from defenses.data import DataLike
from robustbench_local.card import THREAT_MODELS, ModelCard, check_threat_model
from robustbench_local.data import resolve_dataset
from robustbench_local.inputs import eval_tensors
from robustbench_local.utils import tensor_digest

logger = logging.getLogger(__name__)

TRACK_EPS: dict[tuple[str, str], float] = {
    ("mnist", "linf"): 0.3,
    ("cifar10", "linf"): 8 / 255,
    ("cifar10", "l2"): 0.5,
}
"""The eps of the registered datasets' standard tracks (AutoAttack's MNIST, RobustBench's)."""
USER_DATA_EPS: dict[str, float] = {"linf": 8 / 255, "l2": 0.5}
"""The eps a track on the user's data defaults to: the CIFAR-10 tracks' (8-bit images)."""
NO_L1_SUITE = (
    "there is no l1 standard suite yet (AutoAttack's l1 version needs l1-APGD, which this "
    "project does not have), so an l1 card could not be compared with anything. Evaluate l1 "
    "robustness with a curve instead: rbl.robustness_curve(model, data, "
    "[attacks.create('fmn', norm='l1')], eps=[...], reference=attacks.create('alma', "
    "norm='l1')); benchmark tracks are linf or l2"
)


def check_track_threat_model(threat_model: str) -> str:
    """Return ``threat_model`` if a benchmark track can use it.

    Raises:
        ValueError: ``"l1"`` (no standard suite: the message says what to use instead) or
            another unknown threat model (the message lists :data:`THREAT_MODELS`).
    """
    if threat_model == "l1":
        raise ValueError(NO_L1_SUITE)
    return check_threat_model(threat_model)


@dataclass(frozen=True)
class TrackData:
    """A benchmark's test split and how its card names it.

    Attributes:
        test: The test split (a TensorDataset, or ``(x, y)`` tensors for data given in memory).
        name: The registered name, or the name of the user's data.
        digest: sha256 of the user's test split (None for a registered dataset).
        origin: Where the user's data came from (None for a registered dataset).
    """

    test: DataLike
    name: str
    digest: str | None = None
    origin: str | None = None

    @property
    def size(self) -> int:
        """The number of test samples."""
        return len(self.test[0]) if isinstance(self.test, tuple) else len(self.test)  # type: ignore[arg-type]


def track_data(dataset: Any, data_dir: str | os.PathLike[str] | None = None) -> TrackData:
    """Resolve a benchmark's ``dataset=``: a data spec, ``(x, y)`` arrays or a Dataset.

    Args:
        dataset: A registered name, an image folder, an ``.npz``/``.pt`` file, ``module:function``
            (:func:`robustbench_local.data.resolve_dataset`), ``(x, y)`` tensors or numpy
            arrays, or a Dataset of ``(x, y)`` pairs.
        data_dir: Mirror of the registered datasets.

    Returns:
        The test split with its name, and for user data its digest and origin. Files and folders
        come back in the standard layout (8-bit images scaled, said once in the log); data given
        in memory is kept as it is, for :func:`~robustbench_local.inputs.check_eval_inputs` to
        judge.

    Raises:
        ValueError, FileNotFoundError: A spec that does not resolve (the message lists the spec
            forms) or data that cannot be read.
        TypeError: ``dataset`` is neither a spec nor data.
    """
    if isinstance(dataset, str | os.PathLike):
        resolved = resolve_dataset(dataset, data_dir)
        if resolved.kind == "registered":
            return TrackData(resolved.test, str(dataset))
        digest = tensor_digest(*resolved.test.tensors[:2])
        return TrackData(resolved.test, resolved.info.name, digest, _origin(dataset, resolved.kind))
    x, y = eval_tensors(dataset)
    what = "(x, y) arrays" if isinstance(dataset, tuple | list) else type(dataset).__name__
    return TrackData((x, y), "arrays", tensor_digest(x, y), f"in memory ({what})")


def _origin(spec: str | os.PathLike[str], kind: str) -> str:
    """``"folder /abs/path"``, ``"file /abs/path.npz"`` or ``"import module:function"``."""
    if kind == "import":
        return f"import {spec}"
    return f"{kind} {Path(spec).expanduser().resolve()}"


def track_eps(data: TrackData, threat_model: str, eps: float | None) -> float:
    """The track's eps: ``eps`` when given, else the standard one of the data and threat model.

    Raises:
        ValueError: ``eps`` not positive, or none given for a registered dataset without a
            standard track (the message lists the standard ones).
        TypeError: ``eps`` is not a number.
    """
    if eps is not None:
        return check_number("eps", eps, low=0.0, low_open=True)
    if data.digest is not None:
        chosen = USER_DATA_EPS[threat_model]
        logger.info("eps=%s: the %s default for user data (pass eps= to choose)", fmt_eps(chosen),
                    threat_model)  # fmt: skip
        return chosen
    if (data.name, threat_model) in TRACK_EPS:
        return TRACK_EPS[(data.name, threat_model)]
    known = ", ".join(f"{d} {t} {fmt_eps(e)}" for (d, t), e in TRACK_EPS.items())
    raise ValueError(
        f"there is no standard eps for {data.name} {threat_model} (standard tracks: {known}); "
        "pass eps= (--eps), in input units"
    )


def fmt_eps(eps: float) -> str:
    """``0.3``, or ``8/255`` for a multiple of 1/255 that ``%g`` would show as a long decimal."""
    text = f"{eps:g}"
    steps = eps * 255
    if len(text) > 6 and 0 < eps <= 1 and math.isclose(steps, round(steps), abs_tol=1e-6):
        return f"{round(steps)}/255"
    return text


@dataclass(frozen=True)
class Track:
    """The track of a model card: its data, threat model and eps.

    Cards of one track are ranked in one table; the data of user tracks is identified by its
    digest (two cards with the same digest ran on the same images, whatever the file's name).

    Attributes:
        dataset: The dataset's name.
        threat_model: ``"linf"`` or ``"l2"``.
        eps: The budget.
        digest: sha256 of the user's data (None for a registered dataset).
        origin: Where the user's data came from.
    """

    dataset: str
    threat_model: str
    eps: float
    digest: str | None = None
    origin: str | None = None

    @classmethod
    def of(cls, card: ModelCard) -> Track:
        """The track of ``card``."""
        return cls(
            card.dataset, card.threat_model, float(card.eps), card.dataset_digest,
            card.dataset_origin,
        )  # fmt: skip

    @classmethod
    def of_group(cls, cards: Sequence[ModelCard]) -> Track:
        """The track of cards that share one (see :attr:`key`).

        It names every name and origin their data had (the same images as a PNG folder and
        as an ``.npz``).
        """
        first = cls.of(cards[0])
        names = sorted({c.dataset for c in cards})
        origins = sorted({c.dataset_origin for c in cards if c.dataset_origin})
        return dataclasses.replace(
            first, dataset=" / ".join(names), origin="; ".join(origins) or None
        )

    @property
    def key(self) -> tuple[str, str, float]:
        """What equal tracks share: the data (digest, else name), threat model and eps."""
        return (self.digest or self.dataset, self.threat_model, round(self.eps, 9))

    def title(self) -> str:
        """``mnist, linf, eps=0.3``; user data also names its origin and digest."""
        data = self.dataset
        if self.digest is not None:
            data += f" ({self.origin or 'user data'}, sha256 {self.digest[:12]})"
        return f"{data}, {self.threat_model}, eps={fmt_eps(self.eps)}"

    def matches(self, dataset: str | None, threat_model: str | None, eps: float | None) -> bool:
        """Whether the track passes the filters (``dataset`` matches a name or digest prefix)."""
        if dataset is not None and not self._is_dataset(dataset):
            return False
        if threat_model is not None and threat_model != self.threat_model:
            return False
        return eps is None or math.isclose(self.eps, eps, rel_tol=1e-6)

    def _is_dataset(self, dataset: str) -> bool:
        """``dataset`` is the track's name or a prefix of its data digest."""
        return dataset == self.dataset or bool(self.digest and self.digest.startswith(dataset))


__all__ = [
    "NO_L1_SUITE",
    "THREAT_MODELS",
    "TRACK_EPS",
    "USER_DATA_EPS",
    "Track",
    "TrackData",
    "check_track_threat_model",
    "fmt_eps",
    "track_data",
    "track_eps",
]
