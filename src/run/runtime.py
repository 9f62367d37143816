"""Platform and distributed set-up: the one place where Ascend, GPU and CPU differ at run time."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterator, List, Optional

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


@contextlib.contextmanager
def quiet_mindspore_logs() -> Iterator[None]:
    """Silence Python logging (MindSpore's ERROR/CRITICAL lines) inside the block.

    For calls whose failure the caller reports itself, in one line.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def cap_cpu_isa(isa: str) -> bool:
    """Cap the instruction set of oneDNN (MindSpore's CPU kernels for convolutions and LSTMs) at ``isa``.

    oneDNN reads ``ONEDNN_MAX_CPU_ISA`` when it creates its first kernel, so this acts only before a
    network first runs in the process, and never overrides a value the user set. Returns whether
    the cap is the one in force.
    """
    return os.environ.setdefault("ONEDNN_MAX_CPU_ISA", isa) == isa


# The backend plugin each platform needs in mindspore/lib/plugin, and what provides its libraries.
_PLUGINS = {"GPU": ("libmindspore_gpu.so*", "CUDA {version} and cuDNN"),
            "Ascend": ("libmindspore_ascend.so*", "the Ascend CANN toolkit (source its set_env.sh)")}


def _missing_libraries(library: str) -> List[str]:
    """Shared libraries ``library`` needs that the dynamic loader cannot find."""
    if shutil.which("ldd"):
        try:
            result = subprocess.run(["ldd", library], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            result = None
        missing = {line.split("=>")[0].strip() for line in (result.stdout if result else "").splitlines()
                   if "not found" in line}
        if missing:
            return sorted(missing)
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError as err:      # names only the first library the loader missed
        return [str(err).split(":")[0].strip()]
    return []


def backend_problem(platform: str, error: BaseException) -> str:
    """Why this MindSpore installation cannot run on ``platform``, in one line, from its plugin files."""
    import mindspore as ms

    plugin_dir = os.path.join(os.path.dirname(ms.__file__), "lib", "plugin")
    build = f"MindSpore {ms.__version__} ({os.path.dirname(ms.__file__)})"
    text = str(error).strip()
    unexplained = f"--platform {platform}: {build} cannot use it ({text.splitlines()[0][:200] if text else error!r})"
    if platform not in _PLUGINS:
        return unexplained
    pattern, provider = _PLUGINS[platform]
    plugins = sorted(glob.glob(os.path.join(plugin_dir, pattern)))
    if not plugins:
        return (f"--platform {platform}: {build} has no {platform} backend (no {pattern} in {plugin_dir}); "
                f"install a MindSpore build for {platform}, or use --platform CPU")
    # Several CUDA versions may be shipped: report the plugin closest to loading, the newest on a tie.
    candidates = [(plugin, _missing_libraries(plugin)) for plugin in plugins]
    plugin, missing = min(reversed(candidates), key=lambda candidate: len(candidate[1]))
    if not missing:
        return unexplained
    version = plugin.rsplit(".so.", 1)[-1] if ".so." in plugin else "?"
    return (f"--platform {platform}: {build} cannot load its {platform} backend {os.path.basename(plugin)}: "
            f"{', '.join(missing)} not found; install {provider.format(version=version)} so that the loader "
            f"finds them (LD_LIBRARY_PATH), or use --platform CPU")


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
    try:
        # MindSpore logs its own guesses (ERROR lines) before raising; backend_problem says it once.
        with quiet_mindspore_logs():
            if device_id is not None and platform != "CPU":
                ms.set_device(platform, device_id)
            else:
                ms.set_device(platform)
    except RuntimeError as err:
        raise ValueError(backend_problem(platform, err)) from None
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
