"""The certified and corruption settings of a run, read from ``eval`` and checked before training.

``eval.certify`` adds a certified row to each norm's robustness curve
(:func:`robustbench_local.robustness_curve` with ``certify=...``), where the method certifies
that norm; ``eval.corruptions`` and ``eval.severities`` add a corruption curve
(:func:`robustbench_local.corruption_curve`) on the same test samples. Both are parsed and
checked here, from the config alone, so that a typo fails in seconds and not after training:
an unknown method or corruption (the known ones listed, the closest one named), settings the
method refuses, a method that certifies none of the run's norms, severities outside 1-5, or
images too small for the corruptions.

References:
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019 (smoothing certifies l2 balls of the smoothed classifier).
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

logger = logging.getLogger(__name__)

OFF = (None, False, "none", "null", "off", "false")
"""Values of ``eval.certify`` and ``eval.corruptions`` that turn them off."""
BENCH = "bench"
"""The ``eval.severities`` entry for each corruption's benchmark level (``None`` in the API)."""


def _plain(value: Any) -> Any:
    """A config node as plain Python (lists, dicts), anything else as it is."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _is_off(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, str) and value.lower() in OFF)


# --------------------------------------------------------------------------- certification


@dataclass(frozen=True)
class CertifySetting:
    """``eval.certify``, checked: the method, its settings and the norms it certifies here.

    Attributes:
        method: A registered certification method (``ibp``, ``crown``, ``milp``, ``smoothing``).
        settings: Its settings, e.g. ``{"sigma": 0.25, "n": 10000}`` (without ``method``).
        norms: The run's norms the method certifies (the curves that get a certified row).
    """

    method: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    norms: tuple[str, ...] = ()

    def argument(self, norm: str) -> dict[str, Any] | None:
        """The ``certify`` argument of ``norm``'s curve (None where the method cannot certify)."""
        if norm not in self.norms:
            return None
        return {"method": self.method, **self.settings}


def certify_setting(value: Any, norms: Iterable[str]) -> CertifySetting | None:
    """Read ``eval.certify`` for a run whose curves are in ``norms``.

    Args:
        value: ``null`` (off), a method name, or a mapping ``{method: ..., **settings}``.
        norms: The norms of the run's curves (one curve per attack norm).

    Returns:
        The setting, or None when ``eval.certify`` is off.

    Raises:
        ValueError: Not a name or a mapping with ``method``, an unknown method (the known ones
            listed), settings the method refuses, or a method that certifies none of
            ``norms`` (the message says which norms it certifies and what to change).
    """
    value = _plain(value)
    if _is_off(value):
        return None
    method, settings = _method_and_settings(value)
    norms = list(norms)
    ok = [n for n in norms if _certifies(method, n)]
    if not ok:
        raise ValueError(_no_norm_message(method, norms))
    for norm in ok:
        _check_certifier(method, norm, settings)
    skipped = [n for n in norms if n not in ok]
    if skipped:
        logger.info(
            "eval.certify=%s certifies %s only: no certified row on the %s curve(s)",
            method,
            ", ".join(ok),
            ", ".join(skipped),
        )
    return CertifySetting(method, MappingProxyType(dict(settings)), tuple(ok))


def _method_and_settings(value: Any) -> tuple[str, dict[str, Any]]:
    """``(method, settings)`` of a name or a mapping; the method checked against the registry.

    Raises:
        ValueError: Any other shape, or an unknown method (the registry's message).
    """
    from robustbench_local.certify import CERTIFIERS

    if isinstance(value, str):
        method, settings = value, {}
    elif isinstance(value, Mapping) and isinstance(value.get("method"), str):
        method = value["method"]
        settings = {str(k): v for k, v in value.items() if k != "method"}
    else:
        raise ValueError(
            "eval.certify must be null, a method name (e.g. eval.certify=crown) or a mapping "
            f"with a method, e.g. 'eval.certify={{method: smoothing, sigma: 0.25}}'; got {value!r}"
        )
    try:
        CERTIFIERS.get(method)
    except ValueError as err:
        raise ValueError(f"eval.certify: {err}") from None
    return method.lower(), settings


def _certifies(method: str, norm: str) -> bool:
    from robustbench_local.certify import CERTIFIERS

    return norm in getattr(CERTIFIERS.get(method), "norms", ())


def _no_norm_message(method: str, norms: list[str]) -> str:
    from robustbench_local.certify import CERTIFIERS

    own = getattr(CERTIFIERS.get(method), "norms", ())
    others = [m for m in CERTIFIERS.names() if any(_certifies(m, n) for n in norms)]
    hint = f", or choose a method that certifies {'/'.join(norms)}: {', '.join(others)}"
    return (
        f"eval.certify={method} certifies {', '.join(own)} balls only, but this run's curves are "
        f"in {', '.join(norms) or 'no norm'}; add an attack in {own[0]} (e.g. "
        f"'attack=[pgd,pgd_l2]' with an eval.eps.{own[0]} grid){hint if others else ''}"
    )


def _check_certifier(method: str, norm: str, settings: Mapping[str, Any]) -> None:
    """Build the certifier once, so settings it refuses fail before training.

    Raises:
        ValueError: The method's own message (e.g. smoothing without ``sigma``), prefixed.
    """
    from robustbench_local.certify import create_certifier

    try:
        create_certifier(method, norm=norm, **settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"eval.certify ({method}, {norm}): {err}") from None


# ----------------------------------------------------------------------------- corruptions


@dataclass(frozen=True)
class CorruptionSetting:
    """``eval.corruptions`` and ``eval.severities``, checked.

    Attributes:
        corruptions: ``"auto"`` (the suite's benchmark corruptions that fit the images) or
            the names.
        severities: Integers 1 to 5; None is each corruption's benchmark level (``bench``).
    """

    corruptions: str | tuple[str, ...]
    severities: tuple[int | None, ...]

    @property
    def argument(self) -> str | list[str]:
        """The ``corruptions`` argument of :func:`robustbench_local.corruption_curve`."""
        return self.corruptions if isinstance(self.corruptions, str) else list(self.corruptions)


def corruption_setting(
    corruptions: Any,
    severities: Any,
    dataset: str | None = None,
    shape: tuple[int, ...] | None = None,
) -> CorruptionSetting | None:
    """Read ``eval.corruptions`` and ``eval.severities`` (None when corruptions are off).

    Args:
        corruptions: ``none``/``null`` (off), ``auto``, a name or a list of names.
        severities: A list of 1-5 and ``bench`` (each corruption's benchmark level), or one.
        dataset: ``dataset.name`` (named in messages).
        shape: The images' ``(C, H, W)`` (from the loaded data's info; default: a registered
            dataset's). With it the names are checked against the suite of its channels
            (MNIST-C for gray images, CIFAR-10-C for color) and its image size; without it
            against every suite here, and against the images at run time.

    Raises:
        ValueError: Unknown corruption names (the known ones listed, the closest named),
            repeated names, severities outside 1-5, or images too small for the corruptions.
    """
    corruptions = _plain(corruptions)
    if _is_off(corruptions):
        return None
    levels = parse_severities(severities)
    shape = tuple(shape) if shape is not None else _registered_shape(dataset)  # type: ignore[assignment]
    suite = _suite_of(shape, dataset) if shape is not None else None
    if isinstance(corruptions, str) and corruptions.lower() == "auto":
        names: str | tuple[str, ...] = "auto"
    else:
        names = _check_names(corruptions, suite)
    if shape is not None and suite is not None:
        _check_size(names, suite, shape, dataset)
    return CorruptionSetting(names, levels)


def parse_severities(value: Any) -> tuple[int | None, ...]:
    """``eval.severities`` as the API's tuple (``bench`` -> None).

    Raises:
        ValueError: Empty, repeated, or values that are not 1-5 or ``bench``.
    """
    from robustbench_local.corruptions.curve import check_severities

    value = _plain(value)
    items = value if isinstance(value, list | tuple) else [value]
    levels = [None if (v is None or (isinstance(v, str) and v.lower() == BENCH)) else v
              for v in items]  # fmt: skip
    try:
        return check_severities(levels)
    except ValueError as err:
        raise ValueError(
            f"eval.severities={value!r}: {err}; write e.g. [1, 2, 3, 4, 5] or [bench]"
        ) from None


def _registered_shape(dataset: str | None) -> tuple[int, int, int] | None:
    """The image shape ``(C, H, W)`` of a registered dataset (None for other data specs)."""
    from robustbench_local.data import DATASETS, dataset_info

    if not isinstance(dataset, str) or dataset not in DATASETS:
        return None
    return tuple(dataset_info(dataset).shape)  # type: ignore[return-value]


def _suite_of(shape: tuple[int, ...], dataset: str | None) -> str:
    from robustbench_local.corruptions import suite_for_channels

    try:
        return suite_for_channels(int(shape[0]))
    except ValueError as err:
        raise ValueError(f"eval.corruptions on dataset {dataset}: {err}") from None


def _check_names(value: Any, suite: str | None) -> tuple[str, ...]:
    """The names, each known in ``suite`` (or in some suite when it is None), without repeats.

    Raises:
        ValueError: Not a name or a list of names, a repeat, or an unknown name.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(
            f"eval.corruptions must be auto, none or a list of names, got {value!r}; e.g. "
            "'eval.corruptions=[shot_noise,glass_blur]'"
        )
    names = tuple(_known_name(n, suite) for n in items)
    if len(set(names)) != len(names):
        raise ValueError(f"eval.corruptions lists a name twice: {list(items)}")
    return names


def _known_name(name: Any, suite: str | None) -> str:
    from robustbench_local.corruptions import corruption_info, corruption_names

    if not isinstance(name, str):
        raise ValueError(f"eval.corruptions: a corruption name is a string, got {name!r}")
    if suite is not None:
        try:
            return str(corruption_info(name, suite)["corruption"])
        except ValueError as err:
            raise ValueError(f"eval.corruptions: {err}") from None
    known = corruption_names(None)
    if name.lower() in known:
        return name.lower()
    close = difflib.get_close_matches(name.lower(), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"eval.corruptions: unknown corruption {name!r}.{hint} Known corruptions: "
        f"{', '.join(known)}."
    )


def _check_size(
    names: str | tuple[str, ...], suite: str, shape: tuple[int, ...], dataset: str | None
) -> None:
    """Check the registered images are large enough for the chosen corruptions.

    Raises:
        ValueError: Images smaller than a named corruption needs (or than every one, for auto).
    """
    from robustbench_local.corruptions import corruption_info, corruption_names

    side = min(int(shape[1]), int(shape[2]))
    chosen = corruption_names(suite) if names == "auto" else list(names)
    small = [n for n in chosen if corruption_info(n, suite)["min_size"] > side]
    if small and (names != "auto" or len(small) == len(chosen)):
        need = max(corruption_info(n, suite)["min_size"] for n in small)
        raise ValueError(
            f"eval.corruptions: the {dataset} images are {shape[1]}x{shape[2]} pixels but "
            f"{', '.join(small[:3])}{'...' if len(small) > 3 else ''} need at least {need}; "
            "use a dataset of 28-pixel images or larger (e.g. dataset=mnist) or "
            "eval.corruptions=none"
        )


__all__ = [
    "BENCH",
    "CertifySetting",
    "CorruptionSetting",
    "certify_setting",
    "corruption_setting",
    "parse_severities",
]
