"""The defenses on a real MNIST subset with the zoo's small CNN (Wong et al. 2020)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import attacks
import defenses
import robustbench_local.models as rbl
from attacks.adaptive import BPDA
from defenses.detection import FeatureSqueezing
from robustbench_local.data import load_dataset

pytestmark = pytest.mark.slow  # trains CNNs on an MNIST subset: about a minute on one core


@pytest.fixture(scope="module")
def mnist_small(mnist_dir):
    train, test = load_dataset("mnist", mnist_dir)
    x, y = train.tensors
    tx, ty = test.tensors
    return TensorDataset(x[:3000], y[:3000]), (x[3000:3500], y[3000:3500]), (tx[:300], ty[:300])


@pytest.fixture(scope="module")
def standard_cnn(mnist_small, trained):
    """``mnist_small_cnn`` trained for 3 epochs on ``mnist_small``'s 3000 training images."""
    return trained("mnist_small_cnn_standard")


def test_fgsm_at_on_mnist_subset(mnist_small, standard_cnn):
    train, _, (xt, yt) = mnist_small
    torch.manual_seed(0)
    model = rbl.create_model("mnist_small_cnn")
    history = []
    d = defenses.create("fgsm_at", eps=0.2, alpha=0.25, epochs=8, guard_n=256, progress=False)
    model = d.fit(model, train, callbacks=[lambda e, m: history.append(m)])
    pgd = attacks.create("pgd", steps=20)
    at, std = pgd(model, xt, yt, eps=0.2), pgd(standard_cnn, xt, yt, eps=0.2)
    assert float(std.robust_accuracy) < 0.1
    assert float(at.robust_accuracy) > float(std.robust_accuracy) + 0.3
    assert float(at.clean_correct.float().mean()) > 0.9
    assert all("guard_pgd_acc" in m for m in history)
    assert model.arch == "mnist_small_cnn"


def test_default_feature_squeezing_detects_fgsm_on_mnist(mnist_small, standard_cnn):
    _, (xv, _), (xt, yt) = mnist_small
    det = FeatureSqueezing(standard_cnn, fpr=0.05).fit(xv)  # 1-bit depth + 2x2 median
    adv = attacks.create("fgsm")(standard_cnn, xt, yt, eps=0.2).x_adv
    report = det.report(xt, adv, yt)
    assert report["fpr"] < 0.15
    assert report["detection_rate"] > report["fpr"] + 0.3


def test_bpda_breaks_jpeg_on_mnist(mnist_small, standard_cnn):
    _, _, (xt, yt) = mnist_small
    wrapped = defenses.create("jpeg", quality=50).wrap(standard_cnn)
    pgd = attacks.create("pgd", steps=40)
    naive = float(pgd(wrapped, xt, yt, eps=0.2).robust_accuracy)
    adaptive = float(pgd(BPDA(wrapped), xt, yt, eps=0.2).robust_accuracy)
    assert naive > 0.8 and adaptive < 0.1


def test_dropout_option_on_zoo_model(mnist_small):
    train, _, _ = mnist_small
    model = rbl.create_model("mnist_small_cnn")
    d = defenses.create("standard", dropout=0.3, epochs=1, progress=False)
    model = d.fit(model, TensorDataset(*(t[:500] for t in train.tensors)))
    assert model.dropout.p == 0.3 and model.arch_kwargs["dropout"] == 0.3
