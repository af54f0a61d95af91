"""Sharding helpers in one process: slices, collectives without a process group, backends."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustbench_local import distributed as rdist


@given(n=st.integers(0, 2000), size=st.integers(1, 17))
def test_slices_tile_the_list_exactly_once(n, size):
    bounds = [rdist.shard_bounds(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, hi), (lo, _) in itertools.pairwise(bounds):
        assert hi == lo  # contiguous, in rank order, no overlap
    lengths = [hi - lo for lo, hi in bounds]
    assert sum(lengths) == n  # no padded duplicates
    assert max(lengths) - min(lengths) <= 1


def test_slices_known_values():
    assert [rdist.shard_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [rdist.shard_bounds(1, r, 4) for r in range(4)] == [(0, 1), (1, 1), (1, 1), (1, 1)]
    assert [rdist.shard_bounds(10, r, 2) for r in range(2)] == [(0, 5), (5, 10)]


@pytest.mark.parametrize(("n", "rank", "size"), [(-1, 0, 1), (5, 2, 2), (5, -1, 2), (5, 0, 0)])
def test_bad_slice_arguments(n, rank, size):
    with pytest.raises(ValueError, match="0 <= rank < size"):
        rdist.shard_bounds(n, rank, size)


def test_helpers_work_without_a_process_group():
    here = rdist.world()
    assert here == rdist.World(0, 1, None) and here.is_main and not here.distributed
    assert (rdist.rank(), rdist.world_size(), rdist.is_main()) == (0, 1, True)
    assert here.shard(9) == (0, 9)
    assert rdist.gather_objects({"a": 1}) == [{"a": 1}]
    assert rdist.broadcast_object([3]) == [3]
    t = torch.arange(6).view(3, 2)
    assert torch.equal(rdist.gather_rows(t), t)
    assert rdist.decide_once(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError):
        rdist.decide_once(lambda: {}["missing"])
    rdist.check_same("anything", object())
    rdist.barrier()
    assert rdist.setup("cpu") == here  # not under torchrun: stays a single process


def test_nccl_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for call in (
        lambda: rdist.init_distributed("nccl"),
        lambda: rdist.resolve_backend("nccl", "cpu"),
    ):
        with pytest.raises(ValueError, match=r"'nccl' needs CUDA GPUs.*backend='gloo'"):
            call()


def test_auto_backend_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rdist.resolve_backend("auto", "cpu") == "gloo"
    assert rdist.resolve_backend("auto", "cuda") == "gloo"  # no CUDA here: gloo
    assert rdist.resolve_backend("gloo", None) == "gloo"
    with pytest.raises(
        ValueError, match="unknown distributed backend 'mpi'; use one of auto, gloo, nccl"
    ):
        rdist.resolve_backend("mpi")


def test_single_process_env_does_not_start_a_group(monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    assert rdist.init_distributed("gloo") == rdist.World()
    assert not torch.distributed.is_initialized()
