"""Platform and distributed set-up: the one place where Ascend, GPU and CPU differ at run time."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

PLATFORMS = ("Ascend", "GPU", "CPU")

# Environment variables each supported launcher sets for its workers.
_LAUNCHER_ENV = {
    "msrun / dynamic cluster": ("MS_ROLE", "MS_WORKER_NUM"),
    "Ascend rank table": ("RANK_TABLE_FILE", "RANK_ID"),
    "mpirun (OpenMPI)": ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
}


@dataclass
class RunInfo:
    """Where this process runs: platform, rank and group size (1 when standalone)."""

    platform: str
    rank: int = 0
    group_size: int = 1
    data_parallel: bool = False     # started by a launcher with --run_distribute (even with one rank)

    @property
    def distributed(self) -> bool:
        return self.data_parallel or self.group_size > 1


def check_platform(platform: str) -> str:
    if platform not in PLATFORMS:
        raise ValueError(f"--platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    return platform


def launcher_detected(env: Optional[dict] = None) -> Optional[str]:
    """Name of the launcher that set up this process, or None for a plain ``python train.py``."""
    env = os.environ if env is None else env
    for name, keys in _LAUNCHER_ENV.items():
        if all(k in env for k in keys):
            return name
    return None


def set_up(platform: str, run_distribute: bool = False, device_id: Optional[int] = None) -> RunInfo:
    """Set graph mode on ``platform`` and, with ``run_distribute``, join the data-parallel group."""
    import mindspore as ms

    check_platform(platform)
    if device_id is None and platform != "CPU" and os.environ.get("DEVICE_ID", "").isdigit():
        device_id = int(os.environ["DEVICE_ID"])
    ms.set_context(mode=ms.GRAPH_MODE)
    if device_id is not None and platform != "CPU":
        ms.set_device(platform, device_id)
    else:
        ms.set_device(platform)
    if not run_distribute:
        return RunInfo(platform)
    if launcher_detected() is None:
        raise ValueError("--run_distribute needs a distributed launcher (msrun, mpirun or an Ascend rank table "
                           "with RANK_TABLE_FILE/RANK_ID); none set up this process. Use "
                           "scripts/run_distribute_train*.sh, or drop --run_distribute.")
    from mindspore.communication import get_group_size, get_rank, init

    init()  # HCCL on Ascend, NCCL on GPU, the CPU collective backend (gloo-like) on CPU
    rank, size = get_rank(), get_group_size()
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=size)
    return RunInfo(platform, rank, size, data_parallel=True)
