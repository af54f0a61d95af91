"""Run any ART evasion attack behind this package's :class:`~attacks.base.Attack` interface.

Two adapters, one per kind: :class:`ARTAttack` (fixed budget: FGM, PGD, Square...) and
:class:`ARTMinimumNormAttack` (DeepFool, CarliniL2Method...); the registry entry ``"art"`` is a
factory that picks one from ``minimum_norm=``. The adapter wraps the model in ART's
``PyTorchClassifier`` and calls ``generate``; validation, clipping into the ball, the eps loop
and bookkeeping stay in the sealed base class, so an ART attack is checked exactly like a
native one. Forward passes made through ART are counted;
its backward passes are not visible from outside and are reported as 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attacks.base import ATTACKS, Attack, AttackContext, FixedBudgetAttack, MinimumNormAttack
from attacks.threat import Norm
from attacks.validation import check_bool, check_number

_ART_NORM = {Norm.LINF: np.inf, Norm.L2: 2}


class _Counted(nn.Module):
    """Forwards to the model in its dtype and counts per-sample forward passes."""

    def __init__(self, ctx: AttackContext, dtype: torch.dtype) -> None:
        super().__init__()
        self._ctx = ctx
        self._dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        self._ctx.n_forward += x.shape[0]
        return self._ctx.model(x.to(self._dtype))


def _resolve(attack: str | type) -> type:
    """Find an ART evasion attack class by name (``"DeepFool"``) or accept the class."""
    if isinstance(attack, type):
        return attack
    import art.attacks.evasion as evasion

    cls = getattr(evasion, str(attack), None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(evasion) if n[:1].isupper())
        raise ValueError(f"Unknown ART evasion attack {attack!r}. Known: {', '.join(known)}.")
    return cls


class _ARTAdapter:
    """What both ART adapters share: the ART class, its settings and ``generate``.

    Args:
        attack: The ART class or its name in ``art.attacks.evasion`` (default
            ``"FastGradientMethod"``), e.g. ``"DeepFool"``, ``"SquareAttack"``.
        norm: ``linf`` or ``l2``; passed to ART as ``norm`` when the attack takes one.
        eps_key: Name of ART's budget argument (default ``"eps"``); ``eps_step_rel`` sets
            ``eps_step`` relative to eps when ART expects one.
        art_kwargs: Passed to the ART constructor, e.g. ``{"max_iter": 50}``.
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    """

    name = "art"
    norm: Norm
    targeted: bool
    seed: int
    minimum_norm: bool

    def __init__(
        self,
        attack: str | type = "FastGradientMethod",
        norm: str | Norm = Norm.LINF,
        *,
        eps_key: str = "eps",
        eps_step_rel: float | None = None,
        art_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(norm, **kwargs)  # type: ignore[call-arg]
        self.attack = attack if isinstance(attack, str) else attack.__name__
        self._cls = _resolve(attack)
        if not isinstance(eps_key, str) or not eps_key:
            raise TypeError(f"eps_key must be the name of ART's budget argument, got {eps_key!r}")
        self.eps_key = eps_key
        self.eps_step_rel = (
            None
            if eps_step_rel is None
            else check_number("eps_step_rel", eps_step_rel, low_open=True)
        )
        if art_kwargs is not None and not isinstance(art_kwargs, Mapping):
            raise TypeError(f"art_kwargs must be a dict, got {type(art_kwargs).__name__}")
        self.art_kwargs = dict(art_kwargs or {})

    def config(self) -> dict[str, Any]:
        """The settings, with the kind of attack (ART attacks of both kinds share a name)."""
        return {**super().config(), "minimum_norm": self.minimum_norm}  # type: ignore[misc]

    def _art_attack(self, ctx: AttackContext, x: Tensor, n_classes: int, eps: float | None) -> Any:
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(
            model=_Counted(ctx, x.dtype),
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=n_classes,
            clip_values=ctx.bounds,
            device_type="gpu" if x.is_cuda else "cpu",
        )
        kw = dict(self.art_kwargs)
        params = getattr(self._cls, "attack_params", [])
        if "norm" in params:
            kw.setdefault("norm", _ART_NORM[self.norm])
        if "targeted" in params:
            kw.setdefault("targeted", self.targeted)
        if "verbose" in params:
            kw.setdefault("verbose", False)
        if eps is not None:
            kw[self.eps_key] = eps
            if self.eps_step_rel is not None:
                kw["eps_step"] = self.eps_step_rel * eps
        return self._cls(classifier, **kw)

    def _generate(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        """Generate with ART in numpy (float32) and return the result on ``x``'s device.

        ART draws from numpy's global RNG, seeded here with the attack's seed (and restored
        afterwards): its results are reproducible but, unlike the native attacks', they depend
        on the batch a sample is in.
        """
        n_classes = int(ctx.logits(x[:1]).shape[1])
        art_attack = self._art_attack(ctx, x, n_classes, eps)
        state = np.random.get_state()
        np.random.seed(self.seed % 2**32)
        try:
            x_np = x.detach().cpu().numpy().astype(np.float32)
            x_adv = art_attack.generate(x=x_np, y=y.cpu().numpy())
        finally:
            np.random.set_state(state)
        return torch.as_tensor(x_adv, dtype=x.dtype, device=x.device)


class ARTAttack(_ARTAdapter, FixedBudgetAttack):
    """Adapter for an ART (Adversarial Robustness Toolbox 1.20) evasion attack with a budget.

    ART gets ``eps`` (as ``eps_key``) for each budget of the call. For attacks without a budget
    (DeepFool, CarliniL2Method) use :class:`ARTMinimumNormAttack`, or
    ``attacks.create("art", ..., minimum_norm=True)``, which picks the right class.

    Args:
        attack: The ART class or its name (default ``"FastGradientMethod"``).
        norm: ``linf`` or ``l2``.
        minimum_norm: Must be False here (kept so that old keyword calls keep working).
        **kwargs: ``eps_key``, ``eps_step_rel``, ``art_kwargs`` (see ``_ARTAdapter``) and
            ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    Example:
        >>> fgm = attacks.create("art", attack="FastGradientMethod", norm="linf")
        >>> res = fgm(model, x, y, eps=0.1)

    References:
        Nicolae et al., "Adversarial Robustness Toolbox v1.0.0", arXiv:1807.01069, 2018.

    """

    def __init__(
        self,
        attack: str | type = "FastGradientMethod",
        norm: str | Norm = Norm.LINF,
        *,
        minimum_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        if check_bool("minimum_norm", minimum_norm):
            raise ValueError(
                "ARTAttack is the fixed-budget adapter; for DeepFool, CarliniL2Method and other "
                "attacks without a budget use attacks.create('art', attack=..., "
                "minimum_norm=True) or attacks.ARTMinimumNormAttack"
            )
        super().__init__(attack, norm, **kwargs)

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """ART's ``generate`` at budget ``eps``."""
        return self._generate(ctx, x, y, eps)


class ARTMinimumNormAttack(_ARTAdapter, MinimumNormAttack):
    """Adapter for an ART evasion attack without a budget (DeepFool, CarliniL2Method...).

    The sealed call runs ART once and thresholds the perturbation norms at each eps.

    Args:
        attack: The ART class or its name, e.g. ``"DeepFool"``.
        norm: ``linf`` or ``l2``.
        **kwargs: As for :class:`ARTAttack`.

    Example:
        >>> deepfool = attacks.create("art", attack="DeepFool", norm="l2", minimum_norm=True)
        >>> res = deepfool(model, x, y, eps=1.5)

    References:
        Nicolae et al., "Adversarial Robustness Toolbox v1.0.0", arXiv:1807.01069, 2018.

    """

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """ART's ``generate`` without a budget."""
        return self._generate(ctx, x, y, None)


@ATTACKS.register("art", classes=(ARTAttack, ARTMinimumNormAttack))
def art_attack(
    attack: str | type = "FastGradientMethod",
    norm: str | Norm = Norm.LINF,
    *,
    minimum_norm: bool = False,
    **kwargs: Any,
) -> Attack:
    """Build the ART adapter of the right kind: minimum-norm if ``minimum_norm``, else budgeted.

    Example:
        >>> deepfool = attacks.create("art", attack="DeepFool", norm="l2", minimum_norm=True)

    """
    if check_bool("minimum_norm", minimum_norm):
        return ARTMinimumNormAttack(attack, norm, **kwargs)
    return ARTAttack(attack, norm, **kwargs)
