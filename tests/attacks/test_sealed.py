"""The sealed interface: no attack overrides ``__call__``; two kinds; ART picks its kind."""

from __future__ import annotations

import pytest
import torch

import attacks
from attacks.base import ATTACKS, SEALED_METHODS, Attack, FixedBudgetAttack, MinimumNormAttack


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def _attack_classes() -> set[type]:
    """Every registered attack class (factories list theirs) and every subclass of Attack."""
    found = set(_subclasses(Attack))
    for name in attacks.names():
        factory = ATTACKS.get(name)
        found |= {factory} if isinstance(factory, type) else set(ATTACKS.metadata(name)["classes"])
    return found


def test_every_attack_class_is_found():
    names = {c.__name__ for c in _attack_classes()}
    expected = {"PGD", "FGSM", "APGD", "APGDT", "CarliniWagnerL2", "ARTAttack", "AttackSuite"}
    assert expected | {"ARTMinimumNormAttack", "TRADESKL"} <= names


@pytest.mark.parametrize("cls", sorted(_attack_classes(), key=lambda c: c.__qualname__))
def test_no_attack_overrides_the_sealed_methods(cls):
    for name in SEALED_METHODS:
        for base in cls.__mro__:
            if name in vars(base):
                assert base in (Attack, FixedBudgetAttack, MinimumNormAttack), (cls, name, base)
    assert cls.__call__ is Attack.__call__
    assert issubclass(cls, FixedBudgetAttack) != issubclass(cls, MinimumNormAttack)


def test_sealed_methods_are_final():
    for fn in (Attack.__call__, FixedBudgetAttack.perturb, FixedBudgetAttack._evaluate):
        assert getattr(fn, "__final__", False) is True


@pytest.mark.parametrize("name", ["__call__", "perturb", "_evaluate"])
def test_overriding_a_sealed_method_is_refused(name):
    with pytest.raises(TypeError, match=f"overrides the sealed {name}.*write run"):
        type("Sneaky", (FixedBudgetAttack,), {name: lambda self, *a, **k: None, "run": None})


def test_an_attack_must_choose_its_kind():
    class Plain(Attack):
        def run(self, ctx, x, y, eps):
            return x

    with pytest.raises(TypeError, match="abstract"):
        Plain()


def test_minimum_norm_is_a_read_only_property_of_the_kind():
    pgd, cw = attacks.create("pgd"), attacks.create("cw_l2")
    assert (pgd.minimum_norm, cw.minimum_norm) == (False, True)
    with pytest.raises(AttributeError):
        pgd.minimum_norm = True  # type: ignore[misc]
    suite = attacks.AttackSuite([attacks.create("pgd", norm="l2"), cw])
    assert suite.minimum_norm is False


def test_art_factory_picks_the_kind(digits_model, digits_batch):
    x, y = digits_batch
    deepfool = attacks.create("art", attack="DeepFool", norm="l2", minimum_norm=True)
    assert type(deepfool) is attacks.ARTMinimumNormAttack and deepfool.minimum_norm
    fgm = attacks.create("art", attack="FastGradientMethod", norm="linf")
    assert type(fgm) is attacks.ARTAttack and not fgm.minimum_norm
    assert (deepfool.name, fgm.name) == ("art", "art")
    assert deepfool.config()["minimum_norm"] is True and fgm.config()["minimum_norm"] is False
    res = deepfool(digits_model, x[:10], y[:10], eps=[0.5, 5.0])
    assert res.norms.shape == (10,)
    assert torch.equal(res.success[1], res.norms <= 5.0 + 1e-6)
    assert float(res.success[1].float().mean()) > 0.9  # DeepFool breaks almost every digit
    with pytest.raises(ValueError, match="minimum_norm=True"):
        attacks.ARTAttack("DeepFool", "l2", minimum_norm=True)
    with pytest.raises(TypeError, match="minimum_norm"):
        attacks.create("art", minimum_norm="yes")
