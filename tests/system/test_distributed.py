"""Data-parallel training: a real 2-rank CPU run through msrun, and the Ascend/GPU launchers.

Every launcher call below runs in its own session with a timeout; on a timeout the whole
process group is interrupted and killed, and in every case any process still carrying the
test's unique run folder on its command line (msrun's workers live in sessions of their own)
is killed by its id. No test can hang or leave processes behind.
"""
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, ops

from src.config import Config
from src.captcha_spec import CaptchaSpec
from src.dataset import create_dataset
from src.loss import CTCLoss
from tools.hccl_rank_table import RankTableError, read_rank_table
from src.models import create_network
from conftest import REPO, TINY

SCRIPTS = os.path.join(REPO, "scripts")
LOSS_LINE = re.compile(r"epoch: (\d+) step: (\d+), loss is ([0-9.eE+-]+)")
STEP_TIME = re.compile(r"per step time: ([0-9.]+) ms")
BATCH, EPOCHS, RANKS = 16, 2, 2
STEPS = 160 // RANKS // BATCH            # 5 steps per epoch on each rank's 80 images
LR = 0.01 * RANKS                        # the recipe's 0.01, multiplied by the device count


def kill_leftovers(marker: str) -> None:
    """SIGKILL every process (but this one) whose command line mentions ``marker``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def launch(script, *args, run_dir, env=None, timeout=60):
    """``bash scripts/<script> args...`` with WARPCTC_RUN_DIR=run_dir, never outliving ``timeout``."""
    full_env = dict(os.environ)
    full_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + full_env.get("PATH", "")
    full_env["PYTHON"] = sys.executable
    full_env["WARPCTC_RUN_DIR"] = str(run_dir)
    full_env.update(env or {})
    cmd = ["bash", os.path.join(SCRIPTS, script)] + [str(a) for a in args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGINT)          # msrun stops its workers on SIGINT
            proc.communicate(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        pytest.fail(f"{script} did not finish within {timeout} s")
    finally:
        kill_leftovers(str(run_dir))
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def logged_losses(log_file):
    with open(log_file, encoding="utf-8", errors="replace") as handle:
        return [(int(e), int(s), float(v)) for e, s, v in LOSS_LINE.findall(handle.read())]


# ---------------------------------------------------------------- the real 2-rank CPU run

@pytest.fixture(scope="module")
def cpu_run(data_root, tmp_path_factory):
    """2 ranks x 2 epochs x 5 steps on the 160 images, a checkpoint after every step.

    Clipping is switched off (norm 1000, far above any gradient norm here) so that the first
    update shows the size of the averaged gradient: with the recipe's clip at 10, a mean and a
    sum of the two ranks' gradients would give the same (clipped) update.
    """
    run_dir = tmp_path_factory.mktemp("cpu_run") / "run"
    start = time.time()
    proc = launch("run_distribute_train_cpu.sh", RANKS, data_root / "train", "--foreground", *TINY,
                  "--epoch_size", EPOCHS, "--save_checkpoint_steps", 1, "--keep_checkpoint_max", 50,
                  "--clip_global_norm", 1000, run_dir=run_dir, timeout=300)
    return run_dir, proc, time.time() - start


def rank_checkpoints(run_dir, rank):
    """The rank's checkpoints ordered by global step (one per step)."""
    paths = glob.glob(str(run_dir / "checkpoint" / f"rank_{rank}" / "*.ckpt"))
    params = [ms.load_checkpoint(p) for p in paths]
    return sorted(((int(p["global_step"].asnumpy().reshape(-1)[0]), p) for p in params), key=lambda t: t[0])


@pytest.fixture(scope="module")
def replay(data_root):
    """:func:`build_replay` of the test data, once per module."""
    return build_replay(data_root)


def build_replay(data_root):
    """What each rank should have seen and started from, rebuilt in this process.

    ``batches[r]``: rank r's batches in training order (both epochs) from its own shard,
    ``init``: the seeded initial weights every rank starts from (``set_seed(1)`` as train.py),
    ``loss_at(weights, batch)``: the training loss of a batch at given weights.
    """
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    net = create_network(Config(hidden_size=32), "CPU")
    names = [p.name for p in net.trainable_params()]
    init = {n: p.asnumpy().copy() for n, p in zip(names, net.trainable_params())}
    with_loss = nn.WithLossCell(net, CTCLoss(CaptchaSpec(), batch_size=BATCH, sequence_length=net.sequence_length))

    class Grads(nn.Cell):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell
            self.weights = ms.ParameterTuple(cell.trainable_params())
            self.grad = ops.GradOperation(get_by_list=True)

        def construct(self, image, label):
            return self.grad(self.cell, self.weights)(image, label)

    grads = Grads(with_loss)

    def load(weights):
        for name, param in zip(names, net.trainable_params()):
            param.set_data(ms.Tensor(weights[name]))

    def loss_at(weights, batch):
        load(weights)
        return float(with_loss(ms.Tensor(batch[0]), ms.Tensor(batch[1])).asnumpy())

    def grad_at(weights, batch):
        load(weights)
        return {n: g.asnumpy() for n, g in zip(names, grads(ms.Tensor(batch[0]), ms.Tensor(batch[1])))}

    batches = []
    for rank in range(RANKS):
        shard = create_dataset(str(data_root / "train"), Config(batch_size=BATCH, seed=1, num_parallel_workers=2),
                               num_shards=RANKS, shard_id=rank)
        iterator = shard.create_tuple_iterator(num_epochs=EPOCHS, output_numpy=True)
        batches.append([batch for _ in range(EPOCHS) for batch in iterator])    # each pass is one epoch
        assert len(batches[-1]) == EPOCHS * STEPS
    return {"names": names, "init": init, "batches": batches, "loss_at": loss_at, "grad_at": grad_at}


def test_both_ranks_finish_with_their_own_share_of_steps(cpu_run):
    run_dir, proc, seconds = cpu_run
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    for rank in range(RANKS):
        log = (run_dir / "logs" / f"worker_{rank}.log").read_text(errors="replace")
        # N / ranks / batch steps per epoch, and the learning rate scaled by the device count
        assert (f"rank {rank}/{RANKS} on CPU: {STEPS} steps/epoch x {EPOCHS} epochs = {STEPS * EPOCHS} steps, "
                f"batch {BATCH}, lr {LR:g}") in log
        assert [(e, s) for e, s, _ in logged_losses(run_dir / "logs" / f"worker_{rank}.log")] == \
            [(e, s) for e in range(1, EPOCHS + 1) for s in range(1, STEPS + 1)]
        # Each rank names its last checkpoint in full, as the README's next step uses it.
        assert f"last checkpoint {run_dir / 'checkpoint' / f'rank_{rank}' / f'warpctc-{EPOCHS}_{STEPS}.ckpt'}" in log
        assert [step for step, _ in rank_checkpoints(run_dir, rank)] == list(range(1, EPOCHS * STEPS + 1))
    step_ms = [float(v) for v in STEP_TIME.findall((run_dir / "logs" / "worker_0.log").read_text())]
    print(f"\n2-rank CPU run: {seconds:.1f} s wall in all; per-step time by epoch (ms): {step_ms}")


def test_each_rank_trained_on_its_own_disjoint_half(cpu_run, replay):
    run_dir, proc, _ = cpu_run
    assert proc.returncode == 0
    batches = replay["batches"]
    # The two shards split every epoch's 160 images into two disjoint halves of 80.
    digest = [[{hashlib.sha1(img.tobytes()).hexdigest() for image, _ in batches[r][e * STEPS:(e + 1) * STEPS]
                for img in image} for e in range(EPOCHS)] for r in range(RANKS)]
    for epoch in range(EPOCHS):
        assert len(digest[0][epoch]) == len(digest[1][epoch]) == 80
        assert not digest[0][epoch] & digest[1][epoch]
        assert len(digest[0][epoch] | digest[1][epoch]) == 160
    # Every loss a rank printed is the loss of *its* shard's batch at that step, at the weights
    # it held before the step (seeded start, then its own checkpoint of the step before).
    for rank in range(RANKS):
        weights = [replay["init"]] + [{k: v.asnumpy() for k, v in params.items() if isinstance(v, ms.Parameter)}
                                      for _, params in rank_checkpoints(run_dir, rank)]
        logged = [v for *_, v in logged_losses(run_dir / "logs" / f"worker_{rank}.log")]
        expected = [replay["loss_at"](weights[step], batch) for step, batch in enumerate(batches[rank])]
        np.testing.assert_allclose(logged, expected, rtol=1e-5, err_msg=f"rank {rank}")
    other = replay["loss_at"](replay["init"], batches[1][0])
    assert abs(logged_losses(run_dir / "logs" / "worker_0.log")[0][2] - other) > 1e-3   # the halves differ


def test_weights_identical_on_both_ranks_after_every_step(cpu_run, replay):
    run_dir, proc, _ = cpu_run
    assert proc.returncode == 0
    ckpts = [rank_checkpoints(run_dir, rank) for rank in range(RANKS)]
    assert len(ckpts[0]) == len(ckpts[1]) == EPOCHS * STEPS
    for (step, a), (_, b) in zip(*ckpts):
        for name in replay["names"]:
            np.testing.assert_array_equal(a[name].asnumpy(), b[name].asnumpy(), err_msg=f"{name} at step {step}")
            np.testing.assert_array_equal(a["accum." + name].asnumpy(), b["accum." + name].asnumpy())
    final = ckpts[0][-1][1]
    for name in replay["names"]:     # and training really moved them
        assert not np.allclose(final[name].asnumpy(), replay["init"][name]), name


def test_update_is_the_mean_of_both_ranks_gradients_at_scaled_lr(cpu_run, replay):
    run_dir, proc, _ = cpu_run
    assert proc.returncode == 0
    init, names = replay["init"], replay["names"]
    g0 = replay["grad_at"](init, replay["batches"][0][0])
    g1 = replay["grad_at"](init, replay["batches"][1][0])
    mean = {n: (g0[n] + g1[n]) / 2 for n in names}
    assert np.sqrt(sum(float((m.astype(np.float64) ** 2).sum()) for m in mean.values())) < 1000  # no clipping
    after_first = rank_checkpoints(run_dir, 0)[0][1]
    assert int(after_first["global_step"].asnumpy().reshape(-1)[0]) == 1
    for name in names:
        moved = after_first[name].asnumpy() - init[name]
        # SGD with momentum from zero state: the first update is -lr * gradient.
        np.testing.assert_allclose(moved, -LR * mean[name], rtol=1e-3, atol=1e-7, err_msg=name)
    # ... and neither the sum nor one rank's own gradient would have given that update.
    moved = after_first["fc.bias"].asnumpy() - init["fc.bias"]
    assert not np.allclose(moved, -LR * (g0["fc.bias"] + g1["fc.bias"]), rtol=1e-2, atol=1e-6)
    assert not np.allclose(moved, -LR * g0["fc.bias"], rtol=1e-2, atol=1e-6)


def test_loss_falls_on_both_ranks(cpu_run):
    run_dir, proc, _ = cpu_run
    assert proc.returncode == 0
    for rank in range(RANKS):
        values = [v for *_, v in logged_losses(run_dir / "logs" / f"worker_{rank}.log")]
        assert np.mean(values[-3:]) < 0.3 * values[0], values


# ---------------------------------------------------------------- Ascend launcher

def hccl_table(devices, server_id="10.0.0.1"):
    """A rank table 1.0 as hccl_tools.py writes it; ``devices`` are device ids in rank order."""
    return {"version": "1.0", "server_count": "1",
            "server_list": [{"server_id": server_id, "host_nic_ip": "reserve",
                             "device": [{"device_id": str(d), "device_ip": f"192.{r}.27.6", "rank_id": str(r)}
                                        for r, d in enumerate(devices)]}],
            "status": "completed"}


def write_json(path, data):
    path.write_text(json.dumps(data, indent=2) if not isinstance(data, str) else data)
    return path


def dry_run_ranks(stdout):
    """{rank: (summary line, shell words of its command)} from a dry run's output."""
    lines = stdout.splitlines()
    ranks = {}
    for i, line in enumerate(lines):
        match = re.match(r"rank (\d+): device", line)
        if match:
            command = lines[i + 1].strip()
            assert command.endswith("2>&1 < /dev/null &")
            ranks[int(match.group(1))] = (line, shlex.split(command[:-1]))
    return ranks


@pytest.mark.parametrize("devices", [[4, 5], list(range(8))], ids=["2-devices", "8-devices"])
def test_ascend_dry_run_prints_each_rank_env_folder_and_command(data_root, tmp_path, devices):
    table = write_json(tmp_path / "rank_table.json", hccl_table(devices))
    run_dir = tmp_path / "run"
    proc = launch("run_distribute_train.sh", table, data_root / "train", "--dry_run", "--epoch_size", "1",
                  "--hidden_size", "32", run_dir=run_dir)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(devices)} device(s) in all, {len(devices)} on this server" in proc.stdout
    ranks = dry_run_ranks(proc.stdout)
    assert sorted(ranks) == list(range(len(devices)))
    for rank, device in enumerate(devices):
        summary, words = ranks[rank]
        folder = run_dir / f"rank_{rank}"
        assert summary == (f"rank {rank}: device {device}, folder {folder}, log {folder / 'train.log'}, "
                           f"checkpoints {run_dir / 'checkpoint' / f'rank_{rank}'}")
        assert words[:3] == ["cd", str(folder), "&&"]
        assert words[3:9] == ["nohup", "env", f"RANK_TABLE_FILE={table}", f"RANK_SIZE={len(devices)}",
                              f"RANK_ID={rank}", f"DEVICE_ID={device}"]
        train_args = words[9:words.index(">>")]
        assert train_args == [sys.executable, os.path.join(REPO, "train.py"), "--dataset_path",
                              str(data_root / "train"), "--platform", "Ascend", "--run_distribute",
                              "--save_checkpoint_path", str(run_dir / "checkpoint"), "--epoch_size", "1",
                              "--hidden_size", "32"]
        assert words[words.index(">>") + 1] == str(folder / "train.log")
    assert not run_dir.exists()             # a dry run creates nothing


def fake_python(tmp_path):
    """A `python` that records its folder, rank environment and arguments (rank tables: real python)."""
    path = tmp_path / "bin" / "python3"
    path.parent.mkdir()
    path.write_text(f"""#!/usr/bin/env bash
case "${{1:-}}" in *hccl_rank_table.py) exec {shlex.quote(sys.executable)} "$@" ;; esac
echo "cwd=$(pwd)"
echo "env RANK_TABLE_FILE=$RANK_TABLE_FILE RANK_SIZE=$RANK_SIZE RANK_ID=$RANK_ID DEVICE_ID=$DEVICE_ID"
echo "args $*"
[[ "$RANK_ID" != "${{FAIL_RANK:-none}}" ]] || exit 3
""")
    path.chmod(0o755)
    return path


def test_ascend_launcher_starts_one_process_per_device_in_its_own_folder(data_root, tmp_path):
    table = write_json(tmp_path / "rank_table.json", hccl_table([2, 3, 6]))
    run_dir = tmp_path / "run"
    python = fake_python(tmp_path)
    proc = launch("run_distribute_train.sh", table, data_root / "train", "--foreground", "--epoch_size", "1",
                  run_dir=run_dir, env={"PYTHON": str(python)})
    assert proc.returncode == 0, proc.stderr
    assert "all 3 rank(s) finished" in proc.stdout
    for rank, device in enumerate([2, 3, 6]):
        folder = run_dir / f"rank_{rank}"
        assert f"rank {rank}: device {device}, PID " in proc.stdout and str(folder / "train.log") in proc.stdout
        log = (folder / "train.log").read_text().splitlines()
        assert log[0].startswith("===== ") and "run_distribute_train.sh: env RANK_TABLE_FILE=" in log[0]
        log = log[1:]
        assert log[0] == f"cwd={folder}"
        assert log[1] == f"env RANK_TABLE_FILE={table} RANK_SIZE=3 RANK_ID={rank} DEVICE_ID={device}"
        assert log[2].startswith(f"args {REPO}/train.py --dataset_path {data_root / 'train'} --platform Ascend "
                                 f"--run_distribute --save_checkpoint_path {run_dir / 'checkpoint'} --epoch_size 1")

    proc = launch("run_distribute_train.sh", table, data_root / "train", "--foreground", run_dir=run_dir,
                  env={"PYTHON": str(python), "FAIL_RANK": "1"})
    assert proc.returncode == 1
    assert error_line(proc) == f"run_distribute_train.sh: error: rank(s) 1 failed; see {run_dir}/rank_<rank>/train.log"


def test_rank_table_group_list_layout_and_servers():
    # Read in-process: the older group_list layout gives the same ranks as server_list.
    import tempfile

    group = {"group_count": "1", "status": "completed",
             "group_list": [{"group_name": "", "device_num": "2", "server_num": "1", "instance_count": "2",
                             "instance_list": [{"rank_id": "1", "server_id": "s", "devices": [{"device_id": "7"}]},
                                               {"rank_id": "0", "server_id": "s", "devices": [{"device_id": 3}]}]}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.json")
        with open(path, "w") as handle:
            json.dump(group, handle)
        assert [(e.rank_id, e.device_id, e.server_id) for e in read_rank_table(path)] == [(0, 3, "s"), (1, 7, "s")]
        with open(path, "w") as handle:
            json.dump([], handle)
        with pytest.raises(RankTableError, match="must be a JSON object"):
            read_rank_table(path)


TWO_SERVERS = {"version": "1.0", "server_list": [
    {"server_id": "a", "device": [{"device_id": "0", "rank_id": "0"}]},
    {"server_id": "b", "device": [{"device_id": "0", "rank_id": "1"}]}]}

BAD_TABLES = {
    "missing": (None, "does not exist"),
    "invalid-json": ('{"server_list": [', "not valid JSON (Expecting value at line 1 column 18)"),
    "no-devices": ({"version": "1.0", "server_list": [{"server_id": "a", "device": []}]}, "lists no devices"),
    "empty-object": ({}, "has neither 'server_list' (rank table 1.0) nor 'group_list'"),
    "bad-device-id": ({"server_list": [{"server_id": "a", "device": [{"device_id": "x", "rank_id": "0"}]}]},
                      "server_list[0].device[0]: 'device_id' must be a non-negative integer, got 'x'"),
    "rank-gap": ({"server_list": [{"server_id": "a", "device": [{"device_id": "0", "rank_id": "0"},
                                                                 {"device_id": "1", "rank_id": "2"}]}]},
                 "rank ids must be 0..1, each once; got [0, 2]"),
    "two-servers": (TWO_SERVERS, "lists 2 servers (a, b); set SERVER_ID to this machine's server_id and run the "
                                 "launcher on every server"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_invalid_rank_table_is_a_one_line_error(data_root, tmp_path, case):
    content, message = BAD_TABLES[case]
    table = tmp_path / "rank_table.json"
    if content is not None:
        write_json(table, content)
    proc = launch("run_distribute_train.sh", table, data_root / "train", "--dry_run", run_dir=tmp_path / "run")
    assert proc.returncode == 2
    assert error_line(proc) == f"run_distribute_train.sh: error: rank table {table}: {message}"
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_multi_server_table_runs_this_servers_devices_with_server_id(data_root, tmp_path):
    table = write_json(tmp_path / "rank_table.json", TWO_SERVERS)
    proc = launch("run_distribute_train.sh", table, data_root / "train", "--dry_run", run_dir=tmp_path / "run",
                  env={"SERVER_ID": "b"})
    assert proc.returncode == 0, proc.stderr
    ranks = dry_run_ranks(proc.stdout)
    assert list(ranks) == [1] and "RANK_SIZE=2" in ranks[1][1] and "RANK_ID=1" in ranks[1][1]


# ---------------------------------------------------------------- argument errors, GPU and CPU launchers

LAUNCHERS = ["run_distribute_train.sh", "run_distribute_train_for_gpu.sh", "run_distribute_train_gpu.sh",
             "run_distribute_train_cpu.sh"]
MULTI_NODE = "[--nodes N --node_rank K --master_addr HOST] [--master_port P] "
USAGE = {"run_distribute_train.sh": "[RANK_TABLE_FILE] [DATASET_PATH] [--dry_run] [--foreground] ",
         "run_distribute_train_cpu.sh": f"[RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground] {MULTI_NODE}"}
GPU_USAGE = f"[RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground] {MULTI_NODE}[--hostfile FILE] "


@pytest.mark.parametrize("script", LAUNCHERS)
def test_usage_and_argument_errors(data_root, tmp_path, script):
    first = write_json(tmp_path / "t.json", hccl_table([0, 1])) if script == "run_distribute_train.sh" else "2"
    shown = "run_distribute_train_for_gpu.sh" if script == "run_distribute_train_gpu.sh" else script
    run_dir = tmp_path / "run"
    proc = launch(script, first, run_dir=run_dir)
    assert proc.returncode == 2
    usage = USAGE.get(script, GPU_USAGE)
    assert error_line(proc) == f"Usage: bash {shown} {usage}[train.py options...]"
    cases = [([first, tmp_path / "nope"], f"{tmp_path / 'nope'}: no such folder"),
             ([first, data_root / "train", "CPU"], "unexpected argument 'CPU' (extra train.py options start with --)"),
             ([first, data_root / "train", "--dry_run", "--platform", "GPU"],
              "--platform is set by this launcher; do not pass it"),
             ([first, data_root / "train", "--run_distribute"], "--run_distribute is set by this launcher; do not pass it")]
    if script != "run_distribute_train.sh":
        cases += [(["0", data_root / "train"], "RANK_SIZE must be a positive integer, got '0'"),
                  (["two", data_root / "train"], "RANK_SIZE must be a positive integer, got 'two'")]
    for args, message in cases:
        proc = launch(script, *args, run_dir=run_dir)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert error_line(proc) == f"{shown}: error: {message}", args
    assert not run_dir.exists()


def msrun_dry_run(stdout):
    command = next(line for line in stdout.splitlines() if line.startswith("cd "))
    return shlex.split(command)


def test_cpu_dry_run_prints_the_msrun_command_and_rank_env(data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = launch("run_distribute_train_cpu.sh", 3, data_root / "train", "--dry_run", "--epoch_size", "1",
                  run_dir=run_dir, env={"MASTER_PORT": "23456"})
    assert proc.returncode == 0, proc.stderr
    words = msrun_dry_run(proc.stdout)
    assert words[:3] == ["cd", str(run_dir), "&&"]
    assert words[3:10] == ["msrun", "--worker_num=3", "--local_worker_num=3", "--master_addr=127.0.0.1",
                           "--master_port=23456", f"--log_dir={run_dir / 'logs'}", "--join=True"]
    assert words[10:words.index(">")] == [
        "python3", os.path.join(REPO, "train.py"), "--dataset_path", str(data_root / "train"), "--platform", "CPU",
        "--run_distribute", "--save_checkpoint_path", str(run_dir / "checkpoint"), "--epoch_size", "1"]
    for rank in range(3):
        assert (f"rank {rank}: env (set by msrun) MS_ROLE=MS_WORKER MS_WORKER_NUM=3 MS_SCHED_HOST=127.0.0.1 "
                f"MS_SCHED_PORT=23456 MS_NODE_ID={rank} RANK_ID={rank} RANK_SIZE=3 DEVICE_ID={rank}; "
                f"log {run_dir / 'logs' / f'worker_{rank}.log'}; "
                f"checkpoints {run_dir / 'checkpoint' / f'rank_{rank}'}") in proc.stdout
    assert not run_dir.exists()
    proc = launch("run_distribute_train_cpu.sh", 2, data_root / "train", "--dry_run", run_dir=run_dir,
                  env={"MASTER_PORT": "80"})
    assert proc.returncode == 2
    assert error_line(proc) == "run_distribute_train_cpu.sh: error: MASTER_PORT must be a port number in 1024..65535, got '80'"


def fake_bin(tmp_path, version_text):
    folder = tmp_path / "fakebin"
    folder.mkdir(exist_ok=True)
    (folder / "mpirun").write_text(f"#!/bin/sh\necho {shlex.quote(version_text)}\n")
    (folder / "mpirun").chmod(0o755)
    return folder


@pytest.mark.parametrize("script", ["run_distribute_train_for_gpu.sh", "run_distribute_train_gpu.sh"])
def test_gpu_dry_run_uses_open_mpi_mpirun_when_present(data_root, tmp_path, script):
    run_dir = tmp_path / "run"
    folder = fake_bin(tmp_path, "mpirun (Open MPI) 4.1.5")
    proc = launch(script, 4, data_root / "train", "--dry_run", "--epoch_size", "1", run_dir=run_dir,
                  env={"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    words = msrun_dry_run(proc.stdout)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    assert words[3:words.index(">")] == ["mpirun", "-n", "4", *root, "--output-filename", str(run_dir / "log_output"),
                                         "--merge-stderr-to-stdout", sys.executable, os.path.join(REPO, "train.py"),
                                         "--dataset_path", str(data_root / "train"), "--platform", "GPU",
                                         "--run_distribute", "--save_checkpoint_path", str(run_dir / "checkpoint"),
                                         "--epoch_size", "1"]
    for rank in range(4):
        assert (f"rank {rank}: env (set by mpirun) OMPI_COMM_WORLD_RANK={rank} OMPI_COMM_WORLD_SIZE=4 "
                f"OMPI_COMM_WORLD_LOCAL_RANK={rank} (MindSpore turns it into RANK_ID={rank} DEVICE_ID={rank})") \
            in proc.stdout
    assert not run_dir.exists()


def test_gpu_dry_run_falls_back_to_msrun(data_root, tmp_path):
    run_dir = tmp_path / "run"
    folder = fake_bin(tmp_path, "HYDRA build details:")          # MPICH's mpirun: not usable by MindSpore
    proc = launch("run_distribute_train_for_gpu.sh", 2, data_root / "train", "--dry_run", run_dir=run_dir,
                  env={"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "MASTER_PORT": "23457"})
    assert proc.returncode == 0, proc.stderr
    assert "note: the mpirun on PATH is not Open MPI; using msrun" in proc.stdout
    words = msrun_dry_run(proc.stdout)
    assert words[3:10] == ["msrun", "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
                           "--master_port=23457", f"--log_dir={run_dir / 'logs'}", "--join=True"]
    assert words[words.index("--platform") + 1] == "GPU"


def test_gpu_launcher_without_mpirun_or_msrun_is_a_clear_error(data_root, tmp_path):
    # A python whose folder has no msrun, and a PATH with neither launcher on it.
    if shutil.which("mpirun", path="/usr/bin:/bin") or shutil.which("msrun", path="/usr/bin:/bin"):
        pytest.skip("this machine has a launcher in /usr/bin or /bin")
    bare = tmp_path / "py"
    bare.mkdir()
    (bare / "python3").symlink_to(sys.executable)
    proc = launch("run_distribute_train_for_gpu.sh", 2, data_root / "train", "--dry_run", run_dir=tmp_path / "run",
                  env={"PATH": "/usr/bin:/bin", "PYTHON": str(bare / "python3")})
    assert proc.returncode == 2
    assert error_line(proc) == ("run_distribute_train_for_gpu.sh: error: neither mpirun (Open MPI) nor msrun is on "
                                "PATH; install Open MPI, or put MindSpore's msrun (it comes with the mindspore "
                                "package) on PATH")


# ---------------------------------------------------------------- the launchers' options among the train.py options

def recording_bin(tmp_path):
    """A folder of ``python3``, ``msrun`` and ``mpirun`` (Open MPI) that start nothing: every training
    start is recorded in ``tmp_path/started``; the launchers' own python helpers (rank table, free
    port) run on the real interpreter. Returns the launch environment and the record's path."""
    folder, started = tmp_path / "rbin", tmp_path / "started"
    folder.mkdir()
    (folder / "python3").write_text(f"""#!/usr/bin/env bash
case "${{1:-}}" in *train.py) echo "python3 $*" >> {shlex.quote(str(started))}; exit 0 ;; esac
exec {shlex.quote(sys.executable)} "$@"
""")
    for tool in ("msrun", "mpirun"):
        (folder / tool).write_text(f"""#!/usr/bin/env bash
[[ "${{1:-}}" != --version ]] || {{ echo "mpirun (Open MPI) 4.1.5"; exit 0; }}
echo "{tool} $*" >> {shlex.quote(str(started))}
""")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(folder / "python3")}, started


@pytest.mark.parametrize("script", LAUNCHERS)
def test_dry_run_and_foreground_after_train_options_are_the_launchers(data_root, tmp_path, script):
    # A --dry_run after a train.py option used to start the job (and each rank failed on --dry_run).
    first = write_json(tmp_path / "t.json", hccl_table([0, 1])) if script == "run_distribute_train.sh" else "2"
    env, started = recording_bin(tmp_path)
    run_dir = tmp_path / "run"
    proc = launch(script, first, data_root / "train", "--hidden_size", 32, "--dry_run", run_dir=run_dir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "dry run: nothing is started" in proc.stdout and "started in the background" not in proc.stdout
    commands = [line for line in proc.stdout.splitlines() if line.lstrip().startswith("cd ")]
    assert commands and all(line.endswith("--hidden_size 32") or "--hidden_size 32 >" in line for line in commands)
    assert "--dry_run" not in "\n".join(commands)
    assert not started.exists() and not run_dir.exists()        # no process, no run folder
    # --foreground there waits for the end instead of going to train.py.
    proc = launch(script, first, data_root / "train", "--hidden_size", 32, "--foreground", run_dir=run_dir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "started in the background" not in proc.stdout
    record = started.read_text()
    assert "--hidden_size 32" in record and "--foreground" not in record


def test_options_of_other_launchers_are_refused_in_one_line(data_root, tmp_path):
    table = write_json(tmp_path / "t.json", hccl_table([0, 1]))
    env, started = recording_bin(tmp_path)
    proc = launch("run_distribute_train.sh", table, data_root / "train", "--epoch_size", 1, "--nodes", 2,
                  run_dir=tmp_path / "run", env=env)
    assert (proc.returncode, error_line(proc)) == (
        2, "run_distribute_train.sh: error: --nodes is an option of run_distribute_train_cpu.sh and "
           "run_distribute_train_for_gpu.sh, not of this launcher")
    proc = launch("run_distribute_train_cpu.sh", 2, data_root / "train", "--dry_run=yes", run_dir=tmp_path / "run",
                  env=env)
    assert (proc.returncode, error_line(proc)) == (2, "run_distribute_train_cpu.sh: error: --dry_run takes no value")
    assert not started.exists() and not (tmp_path / "run").exists()
