"""The settings of a gate's certified and corruption rows, validated with clear messages.

Beside its attack's robust accuracy a gate can judge

* the **certified accuracy** per eps (``min_certified_accuracy``: one threshold for every eps or
  one per eps, like ``min_accuracy``), with the method in ``certify`` (``"crown"``, or a mapping
  such as ``{"method": "smoothing", "sigma": 0.25}``); the certified row runs on the gate's
  samples, grid and norm (:func:`robustbench_local.robustness_curve` with ``certify=...``);
* the **corruption accuracy** (``min_corruption_accuracy``: a number for the mean over every
  corruption and severity, or a mapping ``{name: threshold}`` per corruption, averaged over the
  severities, where the key ``mean`` is the mean), on ``corruptions`` (``"auto"``: the suite's
  benchmark corruptions, or names; default ``auto``, or the mapping's names) at ``severities``
  (1-5 and ``"bench"`` for each corruption's benchmark level; default 1-5).

Everything here is checked from the settings alone (the corruption names against every suite,
which the data's channels pick at run time); :func:`check_against_attack` builds the certifier
for the gate's norm once the spec is complete. Only the light parts are imported at module
level, so loading the pytest plugin stays cheap.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from robustbench_local.gates.errors import GateConfigError

if TYPE_CHECKING:
    from robustbench_local.gates.spec import GateSpec

AXIS_FIELDS = (
    "certify",
    "min_certified_accuracy",
    "corruptions",
    "severities",
    "min_corruption_accuracy",
)
"""The spec's settings of the certified and corruption rows."""
MEAN = "mean"
"""The key of ``min_corruption_accuracy`` for the mean over every corruption and severity."""
BENCH = "bench"
"""A severity: each corruption's benchmark level (``None`` in the corruption API)."""
SEVERITIES = (1, 2, 3, 4, 5)


def check_axis_settings(kw: dict[str, Any], order: Sequence[int]) -> dict[str, Any]:
    """Pop and validate the axis settings of ``kw`` (a gate's settings).

    Args:
        kw: The settings; the axis keys are removed from it.
        order: The permutation that sorts the gate's eps (per-eps thresholds follow it).

    Returns:
        The spec values of the axis fields that were given (plus ``corruptions`` when a
        corruption threshold implies it).

    Raises:
        GateConfigError: A bad method, threshold, name or severity (the message says what to
            write), or a certified threshold without a ``certify`` method.
    """
    values: dict[str, Any] = {}
    if "certify" in kw:
        values["certify"] = check_certify(kw.pop("certify"))
    if "min_certified_accuracy" in kw:
        raw = kw.pop("min_certified_accuracy")
        if raw is not None:
            if values.get("certify") is None:
                raise GateConfigError(
                    "min_certified_accuracy needs a certification method: add certify='crown' "
                    "(or 'ibp', 'milp', or {'method': 'smoothing', 'sigma': 0.25})"
                )
            thresholds = check_thresholds(raw, len(order), "min_certified_accuracy")
            values["min_certified_accuracy"] = tuple(thresholds[i] for i in order)
    values.update(_corruption_settings(kw))
    return values


def check_certify(value: Any) -> str | dict[str, Any] | None:
    """``certify``: None, a method name or ``{"method": ..., **settings}`` (names lower-cased).

    The method is checked against the registry of certifiers (imported only here).

    Raises:
        GateConfigError: Another shape, or an unknown method (the known ones listed).
    """
    if value is None or value is False:
        return None
    if isinstance(value, str):
        method, settings = value, None
    elif isinstance(value, Mapping) and isinstance(value.get("method"), str):
        method, settings = value["method"], {str(k): v for k, v in value.items() if k != "method"}
    else:
        raise GateConfigError(
            "certify must be a method name such as 'crown' or a mapping such as "
            f"{{'method': 'smoothing', 'sigma': 0.25}}; got {value!r}"
        )
    from robustbench_local.certify import CERTIFIERS

    try:
        CERTIFIERS.get(method)
    except ValueError as err:
        raise GateConfigError(f"certify: {err}") from None
    method = method.lower()
    return method if settings is None else {"method": method, **settings}


def certify_method(value: str | Mapping[str, Any] | None) -> str | None:
    """The method name of a checked ``certify`` value."""
    return value if isinstance(value, str) or value is None else str(value["method"])


def check_thresholds(value: Any, k: int, key: str) -> list[float | None]:
    """One threshold per eps (a single one applies to every eps), each in [0, 1] or None.

    Raises:
        GateConfigError: A list whose length is neither 1 nor ``k``, or a bad threshold.
    """
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(values) == 1:
        values = values * k
    if len(values) != k:
        raise GateConfigError(
            f"{key} has {len(values)} values for {k} eps values: give one threshold (it "
            f"applies to every eps) or {k}, one per eps in the order of eps"
        )
    return [None if v is None else check_fraction(v, key) for v in values]


def check_fraction(value: Any, key: str) -> float:
    """A threshold in [0, 1].

    Raises:
        GateConfigError: Not a finite number in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GateConfigError(f"{key} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        raise GateConfigError(
            f"{key} must be in [0, 1] (a fraction of samples, e.g. 0.85 for 85%), got {value}"
        )
    return v


def _corruption_settings(kw: dict[str, Any]) -> dict[str, Any]:
    """The corruption fields of ``kw`` (popped), the names implied by a threshold mapping."""
    out: dict[str, Any] = {}
    thresholds = None
    if "min_corruption_accuracy" in kw:
        thresholds = check_corruption_thresholds(kw.pop("min_corruption_accuracy"))
        out["min_corruption_accuracy"] = thresholds
    if "severities" in kw:
        out["severities"] = check_severities(kw.pop("severities"))
    names = check_corruptions(kw.pop("corruptions")) if "corruptions" in kw else None
    named = [n for n in (thresholds or {}) if n != MEAN]
    if names is None and thresholds is not None:
        names = tuple(named) if named else "auto"
    if isinstance(names, tuple):
        missing = [n for n in named if n not in names]
        if missing:
            raise GateConfigError(
                f"min_corruption_accuracy names {missing}, which corruptions does not list "
                f"({list(names)}); add them to corruptions or use corruptions: auto"
            )
    if names is not None:
        out["corruptions"] = names
    return out


def check_corruption_thresholds(value: Any) -> dict[str, float] | None:
    """A number (the mean's threshold) or ``{name or "mean": threshold}``.

    Raises:
        GateConfigError: Another shape, an empty mapping, an unknown name or a bad threshold.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not value:
            raise GateConfigError("min_corruption_accuracy is an empty mapping; give thresholds")
        out = {}
        for name, t in value.items():
            key = MEAN if str(name).lower() == MEAN else _known_corruption(name)
            out[key] = check_fraction(t, f"min_corruption_accuracy[{name!r}]")
        return out
    return {MEAN: check_fraction(value, "min_corruption_accuracy")}


def check_corruptions(value: Any) -> str | tuple[str, ...] | None:
    """``corruptions``: None (off), ``"auto"``, or names (each known in some suite).

    The suite follows the data's channels at run time (MNIST-C gray, CIFAR-10-C color), where
    the names are checked against it.

    Raises:
        GateConfigError: Another shape, a repeated or unknown name (the closest one named).
    """
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise GateConfigError(
            f"corruptions must be 'auto' or a list of names such as ['shot_noise', 'fog'], "
            f"got {value!r}"
        )
    names = tuple(_known_corruption(n) for n in items)
    if len(set(names)) != len(names):
        raise GateConfigError(f"corruptions lists a name twice: {list(items)}")
    return names


def _known_corruption(name: Any) -> str:
    from robustbench_local.corruptions import corruption_names

    known = corruption_names(None)
    text = str(name).lower()
    if isinstance(name, str) and text in known:
        return text
    close = difflib.get_close_matches(text, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise GateConfigError(
        f"unknown corruption {name!r}.{hint} Known corruptions (MNIST-C and CIFAR-10-C): "
        f"{', '.join(known)}."
    )


def check_severities(value: Any) -> tuple[int | None, ...]:
    """``severities``: integers 1-5 and ``"bench"`` (None) for the benchmark level.

    Raises:
        GateConfigError: Empty, repeated, or another value.
    """
    items = list(value) if isinstance(value, list | tuple) else [value]
    out: list[int | None] = []
    for s in items:
        if s is None or (isinstance(s, str) and s.lower() == BENCH):
            out.append(None)
        elif isinstance(s, numbers.Integral) and not isinstance(s, bool) and s in SEVERITIES:
            out.append(int(s))
        else:
            raise GateConfigError(
                f"severities must be integers 1 to 5 or 'bench' (each corruption's benchmark "
                f"level), e.g. [1, 2, 3, 4, 5] or ['bench']; got {s!r} in {value!r}"
            )
    if not out or len(set(out)) != len(out):
        raise GateConfigError(f"severities must be a non-empty list without repeats: {value!r}")
    return tuple(out)


def severities_to_json(severities: Sequence[int | None]) -> list[int | str]:
    """Severities as written in gate settings (None as ``"bench"``)."""
    return [BENCH if s is None else int(s) for s in severities]


def axis_to_dict(spec: GateSpec) -> dict[str, Any]:
    """The axis settings of ``spec`` as JSON-able values that :func:`check_axis_settings` reads."""
    cert = spec.certify
    thresholds = spec.min_corruption_accuracy
    return {
        "certify": dict(cert) if isinstance(cert, Mapping) else cert,
        "min_certified_accuracy": (
            None if spec.min_certified_accuracy is None else list(spec.min_certified_accuracy)
        ),
        "corruptions": (
            list(spec.corruptions) if isinstance(spec.corruptions, tuple) else spec.corruptions
        ),
        "severities": severities_to_json(spec.severities),
        "min_corruption_accuracy": None if thresholds is None else dict(thresholds),
    }


def check_against_attack(spec: GateSpec) -> None:
    """Build the gate's certifier for its attack's norm, so bad settings fail at collection.

    Raises:
        GateConfigError: The method does not certify the gate's norm (or refuses its
            settings); the message names a method that does.
    """
    if spec.certify is None:
        return
    from robustbench_local.certify import CERTIFIERS, create_certifier
    from robustbench_local.gates.runner import build_attack

    norm = build_attack(spec).norm.value
    method = str(certify_method(spec.certify))
    settings = {} if isinstance(spec.certify, str) else dict(spec.certify)
    settings.pop("method", None)
    if norm not in CERTIFIERS.get(method).norms:
        ok = [m for m in CERTIFIERS.names() if norm in CERTIFIERS.get(m).norms]
        raise GateConfigError(
            f"certify={method!r} does not certify {norm} balls (the gate's norm); use one of "
            f"{', '.join(ok)}, or an attack in a norm {method} certifies "
            f"({', '.join(CERTIFIERS.get(method).norms)}) with norm=..."
        )
    try:
        create_certifier(method, norm=norm, **settings)
    except (TypeError, ValueError) as err:
        raise GateConfigError(f"certify: {err}") from None


__all__ = [
    "AXIS_FIELDS",
    "BENCH",
    "MEAN",
    "axis_to_dict",
    "certify_method",
    "check_against_attack",
    "check_axis_settings",
    "check_certify",
    "check_corruption_thresholds",
    "check_corruptions",
    "check_fraction",
    "check_severities",
    "check_thresholds",
    "severities_to_json",
]
