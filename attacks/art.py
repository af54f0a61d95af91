"""Run any ART evasion attack behind this package's :class:`~attacks.base.Attack` interface.

The adapter wraps the model in ART's ``PyTorchClassifier`` and calls ``generate``; validation,
clipping into the ball, the eps loop and bookkeeping stay in the sealed base class, so an ART
attack is checked exactly like a native one. Forward passes made through ART are counted;
its backward passes are not visible from outside and are reported as 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackContext, register_attack
from attacks.threat import Norm

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


@register_attack("art")
class ARTAttack(Attack):
    """Adapter for an ART (Adversarial Robustness Toolbox 1.20) evasion attack.

    Args:
        attack: The ART class or its name in ``art.attacks.evasion`` (default
            ``"FastGradientMethod"``), e.g. ``"DeepFool"``, ``"SquareAttack"``.
        norm: ``linf`` or ``l2``; passed to ART as ``norm`` when the attack takes one.
        minimum_norm: True for attacks without a budget (DeepFool, CarliniL2Method); the base
            class then thresholds their perturbation norms at each eps.
        eps_key: Name of ART's budget argument (default ``"eps"``); ``eps_step_rel`` sets
            ``eps_step`` relative to eps when ART expects one.
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` and ``art_kwargs`` (a dict
            passed to the ART constructor, e.g. ``{"max_iter": 50}``).

    Example:
        >>> deepfool = attacks.create("art", attack="DeepFool", norm="l2", minimum_norm=True)
        >>> res = deepfool(model, x, y, eps=1.5)

    References:
        Nicolae et al., "Adversarial Robustness Toolbox v1.0.0", arXiv:1807.01069, 2018.

    """

    def __init__(
        self,
        attack: str | type = "FastGradientMethod",
        norm: str | Norm = Norm.LINF,
        *,
        minimum_norm: bool = False,
        eps_key: str = "eps",
        eps_step_rel: float | None = None,
        art_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(norm, **kwargs)
        self.attack = attack if isinstance(attack, str) else attack.__name__
        self._cls = _resolve(attack)
        self.minimum_norm = bool(minimum_norm)
        self.eps_key = eps_key
        self.eps_step_rel = eps_step_rel
        self.art_kwargs = dict(art_kwargs or {})

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

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        """Generate with ART in numpy (float32) and return the result on ``x``'s device."""
        n_classes = int(ctx.logits(x[:1]).shape[1])
        art_attack = self._art_attack(ctx, x, n_classes, eps)
        state = np.random.get_state()
        np.random.seed(self.seed)
        try:
            x_np = x.detach().cpu().numpy().astype(np.float32)
            x_adv = art_attack.generate(x=x_np, y=y.cpu().numpy())
        finally:
            np.random.set_state(state)
        return torch.as_tensor(x_adv, dtype=x.dtype, device=x.device)
