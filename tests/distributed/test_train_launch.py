"""Launching: the torch.distributed environment from SLURM's, backends, the process group."""

from __future__ import annotations

import pytest
import torch

from defenses import distributed as dist_utils

SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[017-018,031]",
    "SLURM_JOB_ID": "4242",
}


def test_slurm_environment_of_a_task_without_torchrun():
    env = dict(SLURM)
    values = dist_utils.slurm_environment(env)
    assert values == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu017",
        "MASTER_PORT": str(20000 + 4242),
    }
    # applying sets exactly those, and the port is the same on every task of the job
    assert dist_utils.apply_slurm_environment(env) == values
    assert {k: env[k] for k in values} == values
    other_task = {**SLURM, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert dist_utils.slurm_environment(other_task)["MASTER_PORT"] == values["MASTER_PORT"]


def test_torchrun_variables_win_and_outside_slurm_nothing_changes():
    assert dist_utils.slurm_environment({**SLURM, "RANK": "0", "WORLD_SIZE": "2"}) == {}
    assert dist_utils.slurm_environment({"HOME": "/root"}) == {}
    env = {**SLURM, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29400"}
    values = dist_utils.slurm_environment(env)
    assert values["MASTER_ADDR"] == "10.0.0.7" and values["MASTER_PORT"] == "29400"
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}  # no node list (e.g. a local srun)
    assert dist_utils.slurm_environment(env)["MASTER_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node01", "node01"),
        ("node01,node02", "node01"),
        ("gpu[3-5,7]", "gpu3"),
        ("gpu[003-005],cpu1", "gpu003"),
        ("a100-n[12,14]", "a100-n12"),
    ],
)
def test_first_host_of_a_node_list(nodelist, host):
    assert dist_utils.first_host(nodelist) == host


def test_bad_node_list():
    with pytest.raises(ValueError, match="cannot read a host name"):
        dist_utils.first_host("")
    with pytest.raises(ValueError, match="cannot read a host name"):
        dist_utils.first_host("gpu[a-b]")


def test_backends():
    assert dist_utils.resolve_backend("gloo") == "gloo"
    expected = "nccl" if torch.cuda.is_available() else "gloo"
    assert dist_utils.resolve_backend("auto") == expected
    with pytest.raises(ValueError, match="unknown distributed backend 'mpi'"):
        dist_utils.resolve_backend("mpi")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_nccl_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"nccl.*needs CUDA.*use backend='gloo'"):
        dist_utils.resolve_backend("nccl")
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = "1"
    with pytest.raises(ValueError, match="needs CUDA"):
        dist_utils.init_process_group("nccl", env=env)
    assert not torch.distributed.is_initialized()


def test_single_process_needs_no_group_and_half_an_environment_is_an_error():
    assert dist_utils.init_process_group("gloo", env={}) is False
    assert dist_utils.init_process_group("gloo", env={"WORLD_SIZE": "1"}) is False
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT not set: launch with torchrun"):
        dist_utils.init_process_group(
            "gloo", env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
        )
    with dist_utils.distributed_session("gloo") as several:
        assert several is False
        assert (dist_utils.rank(), dist_utils.world_size(), dist_utils.is_main()) == (0, 1, True)
        assert dist_utils.broadcast_object({"a": 1}) == {"a": 1}
        assert dist_utils.all_reduce_sum([1, 2.5], torch.device("cpu")) == [1.0, 2.5]
        assert dist_utils.gather_objects(3) == [3]


def test_channels_last_is_a_no_op_with_a_warning_on_cpu(caplog):
    from torch import nn

    from defenses.trainer import Trainer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    data = torch.utils.data.TensorDataset(torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,)))
    trained = Trainer(epochs=1, batch_size=20, channels_last=True, progress=False).fit(model, data)
    assert "channels_last=True only applies on CUDA" in caplog.text
    assert trained[0].weight.is_contiguous()  # still NCHW-contiguous on the CPU


def test_slurm_launcher_config_is_one_task_per_gpu():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (4, 4)
    assert launcher.max_num_timeout > 0  # time-outs requeue: the job resumes from its folder
    assert cfg.distributed.backend == "auto"
    from hydra.utils import instantiate

    params = instantiate(launcher).params  # what submitit's executor receives
    assert (params["gpus_per_node"], params["tasks_per_node"], params["nodes"]) == (4, 4, 1)
