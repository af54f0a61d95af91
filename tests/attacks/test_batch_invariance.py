"""A sample's result never depends on its batch: alone, in batches of 7 or of 500, any position.

Every random draw of an attack is keyed by (seed, sample id), so attacking a data set in
batches, shards or in another order gives the same adversarial examples as one big batch. The
model runs in float64 so that the only differences left are the float noise of batched
arithmetic (far below the tolerance).
"""

from __future__ import annotations

import copy

import pytest
import torch

import attacks

RANDOM_ATTACKS = [
    ("pgd", {"steps": 10, "restarts": 3}, 0.08),
    ("pgd", {"norm": "l2", "steps": 10, "restarts": 2}, 0.8),
    ("fgsm", {"random_start": True, "rel_step_size": 1.25}, 0.1),
    ("apgd_ce", {"steps": 10, "restarts": 2}, 0.08),
    ("apgd_ce", {"norm": "l2", "steps": 10}, 0.8),
    ("apgd_dlr", {"steps": 8, "n_target_classes": 2, "restarts": 2}, 0.08),
    ("trades_kl", {"steps": 5}, 0.1),
]
IDS = [f"{name}-{kw.get('norm', 'linf')}" for name, kw, _ in RANDOM_ATTACKS]
N, ALONE = 500, 8


@pytest.fixture(scope="module")
def model64(digits_model):
    return copy.deepcopy(digits_model).double().eval()


@pytest.fixture(scope="module")
def data(digits):
    x, y = digits
    g = torch.Generator().manual_seed(0)
    ids = torch.randperm(10_000, generator=g)[:N]  # global ids of a shard: not 0..N-1
    return x[1200 : 1200 + N].double(), y[1200 : 1200 + N].clone(), ids


def _batched(attack, model, x, y, ids, eps, size):
    parts = [
        attack(model, x[i : i + size], y[i : i + size], eps=eps, ids=ids[i : i + size]).x_adv
        for i in range(0, len(y), size)
    ]
    return torch.cat(parts)


@pytest.mark.parametrize(("name", "kw", "eps"), RANDOM_ATTACKS, ids=IDS)
def test_result_of_a_sample_ignores_its_batch(model64, data, name, kw, eps):
    x, y, ids = data
    attack = attacks.create(name, **kw)
    full = attack(model64, x, y, eps=eps, ids=ids)
    assert 0.05 < float(full.robust_accuracy) < float(full.clean_correct.double().mean())
    by7 = _batched(attack, model64, x, y, ids, eps, 7)
    assert torch.allclose(by7, full.x_adv, atol=1e-9, rtol=0)
    for i in range(ALONE):
        alone = attack(model64, x[i : i + 1], y[i : i + 1], eps=eps, ids=ids[i : i + 1])
        assert torch.allclose(alone.x_adv[0], full.x_adv[i], atol=1e-9, rtol=0), i
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    shuffled = attack(model64, x[perm], y[perm], eps=eps, ids=ids[perm])
    assert torch.allclose(shuffled.x_adv, full.x_adv[perm], atol=1e-9, rtol=0)
    assert torch.equal(shuffled.success, full.success[perm])


@pytest.mark.parametrize(("name", "kw", "eps"), RANDOM_ATTACKS[:3], ids=IDS[:3])
def test_ids_and_seed_choose_the_draws(model64, data, name, kw, eps):
    x, y, _ = data
    attack = attacks.create(name, **kw)
    default = attack(model64, x[:50], y[:50], eps=eps)
    explicit = attack(model64, x[:50], y[:50], eps=eps, ids=torch.arange(50))
    assert torch.equal(default.x_adv, explicit.x_adv)
    shifted = attack(model64, x[:50], y[:50], eps=eps, ids=torch.arange(50) + 50)
    reseeded = attacks.create(name, seed=1, **kw)(model64, x[:50], y[:50], eps=eps)
    assert not torch.allclose(shifted.x_adv, default.x_adv)
    assert not torch.allclose(reseeded.x_adv, default.x_adv)


def test_suite_members_follow_the_sample(model64, data):
    x, y, ids = data
    suite = attacks.AttackSuite(
        [attacks.create("pgd", steps=5), attacks.create("apgd_ce", steps=5, restarts=2)]
    )
    full = suite(model64, x, y, eps=0.08, ids=ids)
    by7 = _batched(suite, model64, x, y, ids, 0.08, 7)
    assert torch.allclose(by7, full.x_adv, atol=1e-9, rtol=0)


def test_perturb_of_a_sample_ignores_its_batch(model64, data):
    x, y, ids = data
    attack = attacks.create("pgd", steps=5, early_stop=False)

    def call(rows: slice) -> torch.Tensor:
        torch.manual_seed(0)  # the same call seed for every batch
        return attack.perturb(model64, x[rows], y[rows], 0.1, ids=ids[rows])

    full = call(slice(0, 98))
    assert torch.allclose(torch.cat([call(slice(i, i + 7)) for i in range(0, 98, 7)]), full)
    assert torch.allclose(call(slice(3, 4))[0], full[3])


@pytest.mark.parametrize(
    ("ids", "exc", "match"),
    [
        (torch.arange(3), ValueError, "shape"),
        (torch.arange(4).float(), TypeError, "integer"),
        (-torch.arange(4), ValueError, ">= 0"),
        ([0, 1, 2, 3], TypeError, "Tensor"),
    ],
)
def test_bad_ids(digits_model, digits_batch, ids, exc, match):
    x, y = digits_batch
    with pytest.raises(exc, match=match):
        attacks.create("pgd", steps=1)(digits_model, x[:4], y[:4], eps=0.1, ids=ids)
