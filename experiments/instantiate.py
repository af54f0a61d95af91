"""The one place where config nodes become objects (models, defenses, attacks)."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def build(node: DictConfig | dict[str, Any] | None, what: str, **kwargs: Any) -> Any:
    """Instantiate a config node that has a ``_target_``; ``None`` when it has none.

    Args:
        node: The config node (``_target_`` plus keyword arguments).
        what: What is being built, for error messages (e.g. ``"defense"``).
        **kwargs: Extra keyword arguments for the target.

    Raises:
        ValueError: The target cannot be imported or rejects its arguments; the message names
            the config group to fix.
    """
    if node is None or OmegaConf.select(OmegaConf.create(node), "_target_") is None:
        return None
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ValueError(
            f"could not build the {what} from its config ({cause}); check `{what}` in the "
            f"composed config (python -m experiments.run --cfg job)"
        ) from err


__all__ = ["build"]
