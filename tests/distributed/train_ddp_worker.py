"""One rank of the DDP training checks, started by ``torchrun`` from ``test_train_ddp.py``.

Usage: ``torchrun --nproc_per_node=2 ... train_ddp_worker.py OUT_DIR``. Each rank writes
``OUT_DIR/rank<r>.pt`` with what it trained and observed; the test compares the ranks with each
other and with a single-process run of the same recipes (:func:`standard_recipe` and friends are
imported by the test, so both sides train exactly the same way).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import attacks
import defenses
from defenses import distributed as dist_utils
from defenses.trainer import Trainer, cross_entropy_batch

N_TRAIN = 512  # divides by the global batch and by the world size: no padding
GLOBAL_BATCH = 64


def mnist_subset(n: int = N_TRAIN) -> TensorDataset:
    """The first ``n`` MNIST training images (the offline mirror)."""
    import robustbench_local as rbl

    train, _ = rbl.load_dataset("mnist")
    x, y = train.tensors
    return TensorDataset(x[:n].clone(), y[:n].clone())


def small_cnn(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    """A 2-conv MNIST CNN, deterministic for a seed (optionally with BatchNorm buffers)."""
    torch.manual_seed(seed)
    norm: nn.Module = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2),
        norm,
        nn.ReLU(),
        nn.Conv2d(8, 16, 5, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def standard_trainer(epochs: int = 1) -> Trainer:
    """Plain SGD with momentum, global batch 64: the recipe compared with one process."""
    return Trainer(
        epochs=epochs, batch_size=GLOBAL_BATCH, optimizer="sgd", lr=0.05, seed=3, progress=False
    )


def uneven_attack_batch_fn(flags: list[bool], sums: list[float]) -> Any:
    """PGD-AT whose attack runs a rank-dependent number of steps (2 on rank 0, 3 on rank 1).

    Through a plain DDP wrapper every attack forward broadcasts the BatchNorm buffers, so ranks
    with different step counts stop matching collectives (the weights drift apart, then gloo
    fails). ``sums`` records a checksum of the weights at every step (no broadcast in between:
    they must agree across ranks); ``flags`` that the model came back from each attack in train
    mode with every parameter trainable.
    """
    attack = attacks.create("pgd", steps=2 + dist_utils.rank(), rel_step_size=0.5)

    def batch_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
        sums.append(sum(float(p.detach().double().sum()) for p in net.parameters()))
        x_adv = attack.perturb(net, x, y, 0.3)
        flags.append(net.training and all(p.requires_grad for p in net.parameters()))
        return cross_entropy_batch(net, x_adv, y)

    return batch_fn


def _plain(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "type": type(model).__name__,
        "training": model.training,
    }


def run_checks(out: Path) -> dict[str, Any]:
    """Every DDP check on this rank; returns what the test compares."""
    data = mnist_subset()
    res: dict[str, Any] = {"world_size": dist_utils.world_size(), "rank": dist_utils.rank()}
    seen: list[int] = []
    model = standard_trainer().fit(small_cnn(), data, callbacks=[lambda e, m: seen.append(e)])
    res["standard"], res["callback_epochs"] = _plain(model), seen

    flags: list[bool] = []
    sums: list[float] = []
    adv = Trainer(epochs=2, batch_size=32, optimizer="adam", lr=1e-3, progress=False).fit(
        small_cnn(batchnorm=True), mnist_subset(128), batch_fn=uneven_attack_batch_fn(flags, sums)
    )
    res["uneven_attack"], res["attack_flags"], res["step_sums"] = _plain(adv), flags, sums

    trades = defenses.create(
        "trades", eps=0.3, steps=2, step_size=0.1, epochs=1, batch_size=32, progress=False
    )
    res["trades"] = _plain(trades.fit(small_cnn(batchnorm=True), mnist_subset(128)))

    ckpt = out / "ckpt"
    straight = standard_trainer(epochs=2).fit(small_cnn(), data)
    standard_trainer(epochs=1).fit(small_cnn(), data, checkpoint_dir=ckpt)
    resumed = standard_trainer(epochs=2).fit(
        small_cnn(seed=9), data, checkpoint_dir=ckpt, resume=True
    )
    res["straight2"], res["resumed2"] = _plain(straight), _plain(resumed)

    odd = standard_trainer().fit(small_cnn(), mnist_subset(251))  # 251 samples: sampler pads
    res["odd"] = _plain(odd)
    try:
        Trainer(epochs=1, batch_size=63, progress=False).fit(small_cnn(), data)
    except ValueError as err:
        res["bad_batch_error"] = str(err)
    return res


def main(out: Path) -> None:
    """Initialise the process group from torchrun's environment, run the checks, save them."""
    torch.set_num_threads(1)
    with dist_utils.distributed_session("gloo"):
        res = run_checks(out)
        torch.save(res, out / f"rank{dist_utils.rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
