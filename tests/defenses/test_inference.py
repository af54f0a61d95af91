"""Inference defenses: the wrapped model obeys the model contract and the adaptive protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attacks
import defenses
from attacks.adaptive import BPDA, EOT, adaptive_model, needs_adaptive
from defenses.inference import create_preprocessor, preprocessor_names

INPUT_DEFENSES = preprocessor_names()


@pytest.mark.parametrize("name", INPUT_DEFENSES)
def test_wrapped_model_obeys_contract_and_protocol(name, digits_model, digits_batch):
    x, y = digits_batch
    d = defenses.create(name)
    wrapped = d.wrap(digits_model)
    assert not wrapped.training
    assert wrapped.classifier is digits_model and wrapped.preprocessor is d.preprocessor
    assert torch.equal(wrapped.surrogate(x), x)  # identity BPDA surrogate
    assert needs_adaptive(wrapped) == (
        name in ("bit_depth", "median_filter", "jpeg", "random_noise")
    )
    logits = wrapped(x)
    assert logits.shape == (x.shape[0], 10)
    assert float((logits.argmax(1) == y).float().mean()) > 0.5
    res = attacks.create("pgd", steps=5)(adaptive_model(wrapped, eot_samples=2), x, y, eps=0.1)
    assert res.x_adv.min() >= 0 and (res.x_adv - x).abs().max() <= 0.1 + 1e-6
    if name != "random_noise":
        assert torch.equal(wrapped(x), digits_model(d.preprocessor(x)))


@pytest.mark.parametrize(("name", "kw"), [("bit_depth", {"bits": 2}), ("jpeg", {"quality": 50})])
def test_bpda_breaks_what_naive_pgd_cannot(digits_model, digits_batch, name, kw):
    """Naive PGD sees zero gradients through rounding; BPDA's straight-through pass does not."""
    x, y = digits_batch
    wrapped = defenses.create(name, **kw).wrap(digits_model)
    pgd = attacks.create("pgd", steps=40)
    clean = float((wrapped(x).argmax(1) == y).float().mean())
    naive = float(pgd(wrapped, x, y, eps=0.2).robust_accuracy)
    adaptive = float(pgd(BPDA(wrapped), x, y, eps=0.2).robust_accuracy)
    assert clean > 0.9
    assert naive > 0.8  # looks robust ...
    assert adaptive < 0.2  # ... but is not
    bpda = adaptive_model(wrapped)
    assert isinstance(bpda, BPDA) and bpda.defended is wrapped


def test_random_defense_gets_eot(digits_model, digits_batch):
    x, y = digits_batch
    wrapped = defenses.create("random_noise", sigma=0.2).wrap(digits_model)
    assert not torch.equal(wrapped(x), wrapped(x))
    adaptive = adaptive_model(wrapped, eot_samples=4)
    assert isinstance(adaptive, EOT) and adaptive.samples == 4 and adaptive.model is wrapped
    pgd = attacks.create("pgd", steps=20)
    torch.manual_seed(0)
    res = pgd(adaptive, x, y, eps=0.2)
    assert float(res.robust_accuracy) < 0.8


def test_create_preprocessor_reads_the_registry():
    assert create_preprocessor("jpeg", quality=30).quality == 30
    with pytest.raises(
        ValueError, match=r"Unknown preprocessor 'denoising_autoencoder'.*bit_depth"
    ):
        create_preprocessor("denoising_autoencoder")


def test_bad_wrap():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        defenses.create("jpeg").wrap(lambda x: x)
    with pytest.raises(TypeError, match=r"classifier must be an nn\.Module"):
        defenses.Preprocessed(nn.Identity(), lambda x: x)
