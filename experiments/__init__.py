"""Hydra-configured attack x defense experiments that log robustness curves to MLflow.

Run ``python -m experiments.run`` (the default experiment, offline) or
``python -m experiments.run experiment=mnist_fast_at``; see the README for sweeps.
"""

from experiments.resolvers import register_resolvers

register_resolvers()

__all__ = ["register_resolvers"]
