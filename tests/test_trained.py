"""The cached training helper of the tests (tests/trained.py): a cache hit is the trained model."""

from __future__ import annotations

import dataclasses
import logging
import sys

import pytest
import torch

recipes = sys.modules["tests_trained"]  # loaded by tests/conftest.py

NAME = "digits_mlp"


@pytest.fixture(autouse=True)
def cheap(monkeypatch):
    """The digits_mlp recipe shortened to 3 full-batch steps: these tests check the cache."""
    recipe = recipes.RECIPES[NAME]
    short = dataclasses.replace(recipe, settings={**recipe.settings, "epochs": 3})
    monkeypatch.setitem(recipes.RECIPES, NAME, short)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_cache_hit_gives_the_weights_training_gives(tmp_path):
    rng = torch.get_rng_state()
    first = recipes.trained_model(NAME, tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)  # a miss leaves the global RNG alone
    (stored,) = tmp_path.iterdir()
    assert stored.name == f"{NAME}-{recipes.recipe_key(recipes.RECIPES[NAME])}.pt"
    again = recipes.trained_model(NAME, tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)  # ... and so does a hit
    assert again is not first and not again.training
    assert _same_weights(first, again)
    assert _same_weights(again, recipes.trained_model(NAME))  # no cache: trained again
    assert [p.name for p in tmp_path.iterdir()] == [stored.name]


def test_a_changed_recipe_gets_another_key_and_replaces_the_old_file(tmp_path, monkeypatch):
    recipe = recipes.RECIPES[NAME]
    old = tmp_path / f"{NAME}-0123456789abcdef.pt"
    old.write_bytes(b"weights of an older code version")
    fewer = dataclasses.replace(recipe, settings={**recipe.settings, "epochs": 2})  # not 3
    assert recipes.recipe_key(fewer) != recipes.recipe_key(recipe)
    monkeypatch.setitem(recipes.RECIPES, NAME, fewer)
    recipes.trained_model(NAME, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{NAME}-{recipes.recipe_key(fewer)}.pt"]


def test_a_damaged_cache_file_is_trained_again(tmp_path, caplog):
    path = tmp_path / f"{NAME}-{recipes.recipe_key(recipes.RECIPES[NAME])}.pt"
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="tests_trained"):
        model = recipes.trained_model(NAME, tmp_path)
    assert "cannot read the cached weights" in caplog.text
    assert _same_weights(model, recipes.trained_model(NAME, tmp_path))


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown test model recipe 'nope'.*digits_mlp"):
        recipes.trained_model("nope")
