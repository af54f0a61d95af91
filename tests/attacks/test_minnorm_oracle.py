"""Oracles for the minimum-norm attacks: ART's DeepFool and EAD, and adv-lib's DDN, FMN, ALMA.

ART has no DDN, FMN or ALMA; its DeepFool (l2) and ElasticNet (EAD, l1 decision rule) are
minimum-norm attacks with a published record, so ours must not do worse than them on the
digits MLP. adv-lib 0.2.8 (Rony et al.'s own library) implements the same algorithms as
ours: with the same settings, the same deterministic updates give the same norms, except
where ours deliberately differs (FMN: the exact l1 projection onto the box, and l2 ball
projections where adv-lib rescales every iterate onto the sphere). The adv-lib tests are
skipped where it is not installed (``pip install --no-deps adv-lib==0.2.8``); its LPIPS and
plotting modules import torchvision and visdom, which are stubbed here.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

import art.attacks.evasion as art_evasion
import numpy as np
import pytest
import torch
from torch import nn

import attacks

from .conftest import art_classifier


def _norms(x_adv: torch.Tensor, x: torch.Tensor, fooled: torch.Tensor, p: float) -> torch.Tensor:
    n = (x_adv - x).flatten(1).norm(p=p, dim=1)
    return torch.where(fooled, n, torch.full_like(n, float("inf")))


@pytest.fixture(scope="module")
def correct(digits, digits_model) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out digits the model classifies correctly."""
    x, y = digits
    x, y = x[1200:1400].clone(), y[1200:1400].clone()
    with torch.no_grad():
        keep = digits_model(x).argmax(1) == y
    return x[keep], y[keep]


def _fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


@pytest.mark.slow
def test_l2_attacks_not_weaker_than_art_deepfool(digits_model, correct):
    x, y = correct
    deepfool = art_evasion.DeepFool(art_classifier(digits_model), batch_size=len(y), verbose=False)
    x_df = torch.as_tensor(deepfool.generate(x.numpy()))
    df = _norms(x_df, x, _fooled(digits_model, x_df, y), 2)
    assert float(df.isfinite().float().mean()) > 0.95  # DeepFool works here: a real oracle
    for name in ("ddn", "fmn", "alma", "cw_l2"):
        res = attacks.create(name)(digits_model, x, y)
        assert bool(res.norms.isfinite().all()), name
        assert float(res.norms.median()) <= float(df.median()) * 1.005, name


@pytest.mark.slow
def test_l1_fmn_not_weaker_than_art_elastic_net(digits_model, correct):
    x, y = correct
    x, y = x[:60], y[:60]
    ead = art_evasion.ElasticNet(
        art_classifier(digits_model),
        max_iter=50,
        binary_search_steps=5,
        beta=0.01,
        decision_rule="L1",
        batch_size=len(y),
        verbose=False,
    )
    x_ead = torch.as_tensor(ead.generate(x.numpy(), np.asarray(y)))
    ref = _norms(x_ead, x, _fooled(digits_model, x_ead, y), 1)
    assert float(ref.isfinite().float().mean()) > 0.9
    res = attacks.create("fmn", norm="l1")(digits_model, x, y)
    assert bool(res.norms.isfinite().all())
    assert float(res.norms.median()) <= float(ref[ref.isfinite()].median())


# ------------------------------------------------------------------------------- adv-lib


@pytest.fixture(scope="module")
def adv_lib() -> types.ModuleType:
    """adv-lib's attacks, imported with stubs for torchvision and visdom where they are missing.

    The stubs stay in ``sys.modules`` only while adv-lib is imported (it keeps its references),
    so no other test sees a fake torchvision.
    """
    with pytest.MonkeyPatch.context() as mp:
        for top, subs in (("torchvision", ("models",)), ("visdom", ())):
            if top not in sys.modules and importlib.util.find_spec(top) is None:
                for name in (top, *(f"{top}.{sub}" for sub in subs)):
                    stub = types.ModuleType(name)
                    stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
                    mp.setitem(sys.modules, name, stub)
        module = pytest.importorskip(
            "adv_lib.attacks", reason="pip install --no-deps adv-lib==0.2.8"
        )
    return module


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ours", "theirs", "p", "ratio"),
    [
        (("ddn", {"steps": 200}), ("ddn", {"steps": 200}), 2.0, (0.999, 1.001)),
        (
            ("ddn", {"steps": 200, "levels": None}),
            ("ddn", {"steps": 200, "levels": None}),
            2.0,
            (0.999, 1.001),
        ),
        (("alma", {"steps": 300}), ("alma", {"num_steps": 300}), 2.0, (0.99, 1.01)),
        (
            ("fmn", {"norm": "linf", "steps": 200}),
            ("fmn", {"norm": float("inf"), "steps": 200}),
            float("inf"),
            (0.95, 1.01),
        ),
        (
            ("fmn", {"norm": "l1", "steps": 200}),
            ("fmn", {"norm": 1, "steps": 200}),
            1.0,
            (0.0, 1.0),
        ),
        (
            ("alma", {"norm": "l1", "steps": 300}),
            ("alma", {"distance": "l1", "num_steps": 300}),
            1.0,
            (0.95, 1.02),
        ),
    ],
    ids=["ddn", "ddn-no-levels", "alma", "fmn-linf", "fmn-l1", "alma-l1"],
)
def test_same_algorithm_as_adv_lib(adv_lib, digits_model, correct, ours, theirs, p, ratio):
    """Medians within 0.1-2% of adv-lib's, or smaller (never more than 1-2% larger).

    Smaller where ours differs: l1 FMN projects exactly onto the ball and the box; linf FMN's
    first radius is the linear estimate of the boundary times ``1 + gamma`` (adv-lib's lands
    on its robust side), about 1% smaller norms here. l1 ALMA comes out 2-3% smaller than
    adv-lib's on the digits MLP with the same updates (l2 ALMA matches within 1%); the cause
    was not found, so the lower bound is loose there.
    """
    x, y = correct
    res = attacks.create(ours[0], **ours[1])(digits_model, x, y)
    x_ref = getattr(adv_lib, theirs[0])(digits_model, x, y, **theirs[1]).detach()
    ref = _norms(x_ref, x, _fooled(digits_model, x_ref, y), p)
    assert float(res.norms.isfinite().float().mean()) >= float(ref.isfinite().float().mean())
    low, high = ratio
    r = float(res.norms.median()) / float(ref.median())
    assert low <= r <= high, r
