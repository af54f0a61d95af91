"""The denoising autoencoder: fitted on noisy and adversarial inputs, then wrapped."""

from __future__ import annotations

import pytest
import torch

import defenses
from attacks.adaptive import needs_adaptive


def test_denoising_autoencoder_fit_then_wrap(digits_sets, digits_model, digits_batch):
    train, val, _ = digits_sets
    x, y = digits_batch
    d = defenses.create(
        "denoising_autoencoder",
        eps=0.1,
        attack_steps=3,
        epochs=3,
        width=16,
        lr=3e-3,
        progress=False,
    )
    with pytest.raises(RuntimeError, match=r"call \.fit"):
        d.wrap(digits_model)
    history = []
    returned = d.fit(digits_model, train, val, callbacks=[lambda e, m: history.append(m)])
    assert returned is digits_model and not digits_model.training
    assert all(p.requires_grad for p in digits_model.parameters())  # classifier restored
    assert history[-1]["val_recon_mse"] < history[0]["val_recon_mse"]
    assert history[-1]["val_acc_denoised"] > 0.85
    wrapped = d.wrap(digits_model)
    assert wrapped.differentiable and not wrapped.random and not needs_adaptive(wrapped)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        assert (d.autoencoder(noisy) - x).pow(2).mean() < (noisy - x).pow(2).mean()
        assert float((wrapped(x).argmax(1) == y).float().mean()) > 0.85
    noise_only = defenses.create("denoising_autoencoder", epochs=1, width=8, progress=False)
    assert noise_only.fit(None, train) is None
    guided = defenses.create(
        "denoising_autoencoder", logit_weight=0.1, attack_steps=2, epochs=1, progress=False
    )
    guided.fit(digits_model, train, callbacks=[lambda e, m: history.append(m)])
    assert torch.isfinite(torch.tensor(history[-1]["train_loss"]))


def test_bad_settings_and_data(digits_sets):
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        defenses.create("denoising_autoencoder", noise_std=-1)
    d = defenses.create("denoising_autoencoder", epochs=1, progress=False)
    train, _, _ = digits_sets
    flat = torch.utils.data.TensorDataset(train.tensors[0].flatten(1), train.tensors[1])
    with pytest.raises(ValueError, match=r"needs images \[C, H, W\]"):
        d.fit(None, flat)
    with pytest.raises(TypeError, match=r"model must be an nn\.Module or None"):
        d.fit("model", train)
