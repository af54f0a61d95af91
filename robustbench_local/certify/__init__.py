"""Certified robustness: what is guaranteed, beside what attacks find.

``certify(model, data, method, eps)`` returns a :class:`CertifiedCurve`. Methods (registered in
:data:`CERTIFIERS`): ``"ibp"`` and ``"crown"`` (bound propagation, linf or l2), ``"milp"``
(exact verification of small ReLU networks, linf) and ``"smoothing"`` (randomized smoothing,
l2; it certifies the smoothed classifier, not the base model).

Example:
    >>> import robustbench_local as rbl
    >>> curve = rbl.certify(model.eval(), test, "crown", [0.05, 0.1, 0.2], n_examples=200)
    >>> curve.accuracy
"""

from __future__ import annotations

from robustbench_local.certify import bound_methods, milp, smoothing
from robustbench_local.certify.api import CertifyEvaluation, certify
from robustbench_local.certify.base import (
    CERTIFIERS,
    CertifiedBatch,
    Certifier,
    create_certifier,
    register_certifier,
)
from robustbench_local.certify.curve import CertifiedCurve
from robustbench_local.utils import callable_module

callable_module(__name__, certify)  # rbl.certify(...) works whichever the attribute holds

__all__ = [
    "CERTIFIERS",
    "CertifiedBatch",
    "CertifiedCurve",
    "Certifier",
    "CertifyEvaluation",
    "bound_methods",
    "certify",
    "create_certifier",
    "milp",
    "register_certifier",
    "smoothing",
]
