"""Data parallel across machines: the GPU and CPU launchers' --nodes/--node_rank/--master_addr
(msrun on every machine) and --hostfile (mpirun), and a real two-machine CPU training.

The two machines are two network namespaces joined by a veth pair, each running its own
launcher through ``ip netns exec`` with its own run folder; they only meet over the pair's
addresses. That test needs root and ``ip``, and is skipped with the reason elsewhere.
"""
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TINY
from test_distributed import (BATCH, EPOCHS, RANKS, STEPS, build_replay, error_line, fake_bin, kill_leftovers, launch,
                              logged_losses, rank_checkpoints)

SUBNET = "10.77.0"                   # a private /24 that only exists inside the test's namespaces
ADDRESSES = [f"{SUBNET}.1", f"{SUBNET}.2"]
PORT = 29517
OTHER_MACHINE = "198.51.100.10"      # TEST-NET-2: an address no machine here has
RUN_TIMEOUT = 240


def cd_commands(stdout):
    """The shell words of every ``cd RUN && launcher ...`` line of a dry run, in order."""
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("cd ")]


# ---------------------------------------------------------------- dry runs and errors (no namespaces)

@pytest.mark.parametrize("script,platform", [("run_distribute_train_cpu.sh", "CPU"),
                                             ("run_distribute_train_for_gpu.sh", "GPU")])
def test_dry_run_prints_every_machines_msrun_command_and_global_ranks(data_root, tmp_path, script, platform):
    run_dir = tmp_path / "run"
    # An Open MPI mpirun on PATH must not matter: --nodes means msrun on every machine.
    folder = fake_bin(tmp_path, "mpirun (Open MPI) 4.1.5")
    # The launcher's options may stand among the train.py options.
    proc = launch(script, 6, data_root / "train", "--nodes", 3, "--epoch_size", 1, "--node_rank", 1, "--dry_run",
                  "--master_addr", OTHER_MACHINE, "--master_port", 29400, run_dir=run_dir,
                  env={"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert (f"ranks: 6 on 3 machine(s), 2 on this one (node 1: global ranks 2..3); {platform}, "
            "each reads 1/6 of the data") in proc.stdout
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("node ")] == [
        "node 0/3: global ranks 0..1", "node 1/3 (this machine): global ranks 2..3", "node 2/3: global ranks 4..5"]
    commands = cd_commands(proc.stdout)
    assert len(commands) == 3
    for node, words in enumerate(commands):
        assert words[:3] == ["cd", str(run_dir), "&&"]
        assert words[3:12] == ["msrun", "--worker_num=6", "--local_worker_num=2", f"--node_rank={node}",
                               f"--master_addr={OTHER_MACHINE}", "--master_port=29400",
                               f"--log_dir={run_dir / 'logs'}", "--join=True", "python3"]
        assert words[words.index(">") + 1] == str(run_dir / f"msrun_node{node}.log")
        assert words[12:words.index(">")] == [
            os.path.join(REPO, "train.py"), "--dataset_path", str(data_root / "train"), "--platform", platform,
            "--run_distribute", "--save_checkpoint_path", str(run_dir / "checkpoint"), "--epoch_size", "1"]
    # Each node's ranks follow its command line: global rank = node * 2 + local rank.
    for rank in range(6):
        line = lines.index(next(x for x in lines if x.startswith(f"rank {rank}: ")))
        assert lines[line - 1 - rank % 2].startswith("cd ")
        assert (f"rank {rank}: env (set by msrun) MS_ROLE=MS_WORKER MS_WORKER_NUM=6 MS_SCHED_HOST={OTHER_MACHINE} "
                f"MS_SCHED_PORT=29400 MS_NODE_ID={rank} RANK_ID={rank} RANK_SIZE=6 DEVICE_ID={rank % 2}; "
                f"log {run_dir / 'logs' / f'worker_{rank}.log'}; "
                f"checkpoints {run_dir / 'checkpoint' / f'rank_{rank}'}") == lines[line]
    assert (f"scheduler: {OTHER_MACHINE}:29400, started by the msrun of the machine with that address "
            "(another machine, whose launcher starts it)") in proc.stdout
    assert not run_dir.exists()


def test_dry_run_on_the_scheduler_machine_and_default_port(data_root, tmp_path):
    run_dir = tmp_path / "run"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((OTHER_MACHINE, 9))          # no packet is sent: this only picks a source address
        here = probe.getsockname()[0]
    except OSError as err:
        pytest.skip(f"this machine has no route off loopback ({err})")
    finally:
        probe.close()
    if here.startswith("127."):
        pytest.skip("this machine has no network address besides loopback")
    proc = launch("run_distribute_train_cpu.sh", 2, data_root / "train", "--dry_run", "--nodes", 2,
                  "--node_rank", 0, "--master_addr", here, run_dir=run_dir, env={"MASTER_PORT": ""})
    assert proc.returncode == 0, proc.stderr
    assert f"scheduler: {here}:8118, started by the msrun of the machine with that address (this machine)" \
        in proc.stdout
    assert [w[6] for w in cd_commands(proc.stdout)] == ["--node_rank=0", "--node_rank=1"]


def test_one_node_flags_keep_the_single_machine_command(data_root, tmp_path):
    # --master_port alone only picks the loopback scheduler's port; the command is otherwise as before.
    proc = launch("run_distribute_train_cpu.sh", 2, data_root / "train", "--dry_run", "--master_port", 29401,
                  run_dir=tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    [words] = cd_commands(proc.stdout)
    assert words[3:8] == ["msrun", "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
                          "--master_port=29401"]
    assert "node " not in proc.stdout


NODE_ERRORS = [
    (["3", "--nodes", "2", "--node_rank", "0", "--master_addr", OTHER_MACHINE],
     "RANK_SIZE 3 is not divisible by --nodes 2 (every machine runs RANK_SIZE / N ranks)"),
    (["4", "--nodes", "2", "--node_rank", "2", "--master_addr", OTHER_MACHINE],
     "--node_rank must be in 0..1 (--nodes 2), got '2'"),
    (["4", "--nodes", "2", "--node_rank", "-1", "--master_addr", OTHER_MACHINE],
     "--node_rank must be in 0..1 (--nodes 2), got '-1'"),
    (["4", "--nodes", "2", "--master_addr", OTHER_MACHINE],
     "--nodes 2 needs --node_rank (this machine's number, 0..1)"),
    (["4", "--nodes", "2", "--node_rank", "1"],
     "--nodes needs --master_addr (the address of the machine that runs the scheduler, the same on every machine)"),
    (["4", "--nodes", "0", "--master_addr", OTHER_MACHINE], "--nodes must be a positive integer, got '0'"),
    (["4", "--nodes", "2", "--node_rank", "1", "--master_addr", "no-such-host.invalid"],
     "--master_addr no-such-host.invalid: does not resolve to an address"),
    (["4", "--nodes", "2", "--node_rank", "1", "--master_addr", "127.0.0.1"],
     "--master_addr 127.0.0.1 is a loopback address, which the other machines cannot reach; "
     "give the scheduler machine's network address"),
    (["4", "--nodes", "2", "--node_rank", "1", "--master_addr", OTHER_MACHINE, "--master_port", "80"],
     "--master_port must be a port number in 1024..65535, got '80'"),
    (["4", "--nodes", "2", "--node_rank", "1", "--master_addr", OTHER_MACHINE, "--master_port", "65536"],
     "--master_port must be a port number in 1024..65535, got '65536'"),
    (["4", "--node_rank", "1"], "--node_rank needs --nodes"),
    (["4", "--master_addr", OTHER_MACHINE], "--master_addr needs --nodes"),
    (["4", "--nodes"], "--nodes needs a value"),
    (["4", "--nodes", "2", "--nodes", "2"], "--nodes is given twice"),
    (["4", "--epoch_size", "1", "--nodes", "2"],          # after a train.py option, still the launcher's
     "--nodes needs --master_addr (the address of the machine that runs the scheduler, the same on every machine)"),
]


@pytest.mark.parametrize("script", ["run_distribute_train_cpu.sh", "run_distribute_train_for_gpu.sh",
                                    "run_distribute_train_gpu.sh"])
def test_node_flag_errors_are_one_line(data_root, tmp_path, script):
    shown = "run_distribute_train_for_gpu.sh" if script == "run_distribute_train_gpu.sh" else script
    run_dir = tmp_path / "run"
    for (rank_size, *flags), message in NODE_ERRORS:
        proc = launch(script, rank_size, data_root / "train", *flags, run_dir=run_dir)
        assert (proc.returncode, error_line(proc)) == (2, f"{shown}: error: {message}"), flags
        assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_cpu_launcher_has_no_hostfile(data_root, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\n")
    proc = launch("run_distribute_train_cpu.sh", 2, data_root / "train", "--hostfile", hostfile,
                  run_dir=tmp_path / "run")
    assert (proc.returncode, error_line(proc)) == (
        2, "run_distribute_train_cpu.sh: error: --hostfile is for mpirun (run_distribute_train_for_gpu.sh); "
           "here give --nodes N --node_rank K --master_addr HOST on each machine")


def test_hostfile_dry_run_places_ranks_host_by_host(data_root, tmp_path):
    run_dir = tmp_path / "run"
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two GPU machines\ngpu-a slots=2 max_slots=2\n\ngpu-b   slots=3  # the bigger one\n")
    folder = fake_bin(tmp_path, "mpirun (Open MPI) 4.1.5")
    proc = launch("run_distribute_train_for_gpu.sh", 4, data_root / "train", "--dry_run", "--hostfile", hostfile,
                  run_dir=run_dir, env={"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    [words] = cd_commands(proc.stdout)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    assert words[3:10 + len(root)] == ["mpirun", "-n", "4", *root, "--hostfile", str(hostfile), "--output-filename",
                                      str(run_dir / "log_output")]
    lines = proc.stdout.splitlines()
    hosts = [line.split(";")[0] for line in lines if line.startswith("host ")]
    assert hosts == ["host gpu-a (slots 2): global ranks 0..1", "host gpu-b (slots 3): global ranks 2..3"]
    for rank, local in [(0, 0), (1, 1), (2, 0), (3, 1)]:
        assert (f"rank {rank}: env (set by mpirun) OMPI_COMM_WORLD_RANK={rank} OMPI_COMM_WORLD_SIZE=4 "
                f"OMPI_COMM_WORLD_LOCAL_RANK={local} (MindSpore turns it into RANK_ID={rank} DEVICE_ID={local}); "
                f"log {run_dir}/log_output/<job>/rank.{rank}/stdout; checkpoints {run_dir}/checkpoint/rank_{rank}") \
            in lines
    assert not run_dir.exists()


HOSTFILE_ERRORS = {
    "missing": (None, "{path}: no such file"),
    "too-few-slots": ("a slots=2\nb slots=1\n", "{path} lists 3 slot(s) in all, fewer than RANK_SIZE 4"),
    "empty": ("# nothing yet\n", "{path} lists 0 slot(s) in all, fewer than RANK_SIZE 4"),
    "no-slots": ("a slots=2\nb\n", "{path} line 2: b has no slots=N (give each machine slots=<its GPU count>)"),
    "bad-slots": ("a slots=two\n", "{path} line 1: slots must be a positive integer, got 'two'"),
}


@pytest.mark.parametrize("case", sorted(HOSTFILE_ERRORS))
def test_hostfile_errors_are_one_line(data_root, tmp_path, case):
    content, message = HOSTFILE_ERRORS[case]
    hostfile = tmp_path / "hosts"
    if content is not None:
        hostfile.write_text(content)
    folder = fake_bin(tmp_path, "mpirun (Open MPI) 4.1.5")
    proc = launch("run_distribute_train_for_gpu.sh", 4, data_root / "train", "--hostfile", hostfile,
                  run_dir=tmp_path / "run", env={"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"})
    assert (proc.returncode, error_line(proc)) == (
        2, f"run_distribute_train_for_gpu.sh: error: --hostfile {message.format(path=hostfile)}")
    assert not (tmp_path / "run").exists()


def test_hostfile_needs_open_mpi_and_does_not_mix_with_nodes(data_root, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\n")
    folder = fake_bin(tmp_path, "HYDRA build details:")          # MPICH's mpirun
    path = {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    proc = launch("run_distribute_train_for_gpu.sh", 2, data_root / "train", "--hostfile", hostfile,
                  run_dir=tmp_path / "run", env=path)
    assert (proc.returncode, error_line(proc)) == (
        2, "run_distribute_train_for_gpu.sh: error: --hostfile is passed to Open MPI's mpirun, but the mpirun on "
           "PATH is not Open MPI")
    proc = launch("run_distribute_train_for_gpu.sh", 2, data_root / "train", "--hostfile", hostfile, "--nodes", 2,
                  "--node_rank", 0, "--master_addr", OTHER_MACHINE, run_dir=tmp_path / "run", env=path)
    assert (proc.returncode, error_line(proc)) == (
        2, "run_distribute_train_for_gpu.sh: error: --hostfile (mpirun starts every machine's ranks from here) and "
           "--nodes/--node_rank/--master_addr/--master_port (msrun on each machine) do not mix; give one")
    assert not (tmp_path / "run").exists()


def test_gpu_nodes_without_msrun_is_a_clear_error(data_root, tmp_path):
    # Open MPI's mpirun is there, but --nodes needs msrun, which this python's folder lacks.
    if shutil.which("msrun", path="/usr/bin:/bin"):
        pytest.skip("this machine has msrun in /usr/bin or /bin")
    bare = tmp_path / "py"
    bare.mkdir()
    (bare / "python3").symlink_to(sys.executable)
    folder = fake_bin(tmp_path, "mpirun (Open MPI) 4.1.5")
    proc = launch("run_distribute_train_for_gpu.sh", 2, data_root / "train", "--dry_run", "--nodes", 2,
                  "--node_rank", 0, "--master_addr", OTHER_MACHINE, run_dir=tmp_path / "run",
                  env={"PATH": f"{folder}{os.pathsep}/usr/bin:/bin", "PYTHON": str(bare / "python3")})
    assert (proc.returncode, error_line(proc)) == (
        2, "run_distribute_train_for_gpu.sh: error: --nodes starts MindSpore's msrun on each machine, but msrun is "
           "not on PATH (it comes with the mindspore package)")


# ---------------------------------------------------------------- two machines: network namespaces

def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def namespaces():
    """Two network namespaces joined by a veth pair, ``ADDRESSES[k]`` on namespace k's end and
    loopback up in each; their names. Removed after the module (their veth ends go with them)."""
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces")
    tag = f"wc{os.getpid()}"
    names, links = [f"{tag}n0", f"{tag}n1"], [f"{tag}v0", f"{tag}v1"]     # interface names: 15 chars at most
    steps = [["netns", "add", names[0]], ["netns", "add", names[1]],
             ["link", "add", links[0], "netns", names[0], "type", "veth", "peer", "name", links[1], "netns", names[1]]]
    for k in range(2):
        steps += [["-n", names[k], "addr", "add", f"{ADDRESSES[k]}/24", "dev", links[k]],
                  ["-n", names[k], "link", "set", links[k], "up"], ["-n", names[k], "link", "set", "lo", "up"]]
    try:
        for step in steps:
            result = ip(*step)
            if result.returncode:
                pytest.skip(f"cannot make the test's network namespaces: `ip {' '.join(step)}`: "
                            f"{result.stderr.strip()}")
        yield names
    finally:
        existing = ip("netns", "list").stdout
        for name in names:
            if name in existing:
                ip("netns", "delete", name)


@pytest.fixture(scope="module")
def two_node_run(namespaces, data_root, tmp_path_factory):
    """One CPU training of 2 ranks on two 'machines': the launcher in each namespace with
    ``--nodes 2 --node_rank k --master_addr <namespace 0's address>``, its own run folder, a
    checkpoint after every step. Returns the run folders and the launchers' results."""
    base = tmp_path_factory.mktemp("two_nodes")
    run_dirs = [base / f"node{k}" for k in range(2)]
    env = dict(os.environ, PYTHON=sys.executable,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    logs = [(base / f"node{k}.out", base / f"node{k}.err") for k in range(2)]
    procs = []
    start = time.time()
    try:
        for k, name in enumerate(namespaces):
            cmd = ["ip", "netns", "exec", name, "bash", os.path.join(REPO, "scripts", "run_distribute_train_cpu.sh"),
                   str(RANKS), str(data_root / "train"), "--foreground", "--nodes", "2", "--node_rank", str(k),
                   "--master_addr", ADDRESSES[0], "--master_port", str(PORT), *TINY, "--epoch_size", str(EPOCHS),
                   "--save_checkpoint_steps", "1", "--keep_checkpoint_max", "50"]
            with open(logs[k][0], "w") as out, open(logs[k][1], "w") as err:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True,
                                              env=dict(env, WARPCTC_RUN_DIR=str(run_dirs[k]))))
        # A node that fails leaves the other waiting for the cluster: stop at the first failure.
        while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs):
            if time.time() - start > RUN_TIMEOUT:
                pytest.fail(f"the two-node training did not finish within {RUN_TIMEOUT} s; see {base}")
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for run_dir in run_dirs:
            kill_leftovers(str(run_dir))       # msrun's workers live in sessions of their own
    print(f"\ntwo-node CPU run: {time.time() - start:.1f} s wall")
    return run_dirs, [subprocess.CompletedProcess(p.args, p.returncode, out.read_text(), err.read_text())
                      for p, (out, err) in zip(procs, logs)]


@pytest.fixture(scope="module")
def replay(data_root):
    """The shards, seeded start and losses each rank should have had (as in test_distributed)."""
    return build_replay(data_root)


def test_both_nodes_finish_with_logs_and_checkpoints_named_by_global_rank(two_node_run):
    run_dirs, results = two_node_run
    for k, result in enumerate(results):
        assert result.returncode == 0, (k, result.stdout[-3000:], result.stderr[-3000:])
        assert (f"msrun: node {k}/2, global ranks {k}..{k} of 2 (CPU); scheduler on {ADDRESSES[0]}:{PORT} "
                f"({'this machine' if k == 0 else 'another machine, whose launcher starts it'})") in result.stdout
        log = run_dirs[k] / "logs" / f"worker_{k}.log"
        assert (f"rank {k}/2 on CPU: {STEPS} steps/epoch x {EPOCHS} epochs = {STEPS * EPOCHS} steps, "
                f"batch {BATCH}") in log.read_text(errors="replace")
        assert [step for step, _ in rank_checkpoints(run_dirs[k], k)] == list(range(1, EPOCHS * STEPS + 1))
    # Each machine holds only its own rank's files; only namespace 0 (master_addr) ran the scheduler.
    assert sorted(os.listdir(run_dirs[0] / "logs")) == ["scheduler.log", "worker_0.log"]
    assert sorted(os.listdir(run_dirs[1] / "logs")) == ["worker_1.log"]
    assert os.listdir(run_dirs[0] / "checkpoint") == ["rank_0"] and os.listdir(run_dirs[1] / "checkpoint") == ["rank_1"]
    for k in range(2):      # one launcher log per machine, so that a shared run folder keeps them apart
        assert sorted(p for p in os.listdir(run_dirs[k]) if p.endswith(".log")) == [f"msrun_node{k}.log"]


def test_the_two_ranks_trained_on_disjoint_shards(two_node_run, replay):
    run_dirs, results = two_node_run
    assert [r.returncode for r in results] == [0, 0]
    batches = replay["batches"]
    for epoch in range(EPOCHS):
        images = [{hashlib.sha1(img.tobytes()).hexdigest() for image, _ in batches[k][epoch * STEPS:(epoch + 1) * STEPS]
                   for img in image} for k in range(RANKS)]
        assert len(images[0]) == len(images[1]) == 80 and not images[0] & images[1]
    # Every loss a rank printed is the loss of its own shard's batch at the weights it held
    # before that step (the seeded start, then its checkpoint of the step before).
    for k in range(RANKS):
        weights = [replay["init"]] + [{n: v.asnumpy() for n, v in params.items() if n in replay["init"]}
                                      for _, params in rank_checkpoints(run_dirs[k], k)]
        logged = [v for *_, v in logged_losses(run_dirs[k] / "logs" / f"worker_{k}.log")]
        expected = [replay["loss_at"](weights[step], batch) for step, batch in enumerate(batches[k])]
        np.testing.assert_allclose(logged, expected, rtol=1e-5, err_msg=f"rank {k}")


def test_final_weights_are_identical_and_the_loss_falls(two_node_run, replay):
    run_dirs, results = two_node_run
    assert [r.returncode for r in results] == [0, 0]
    ckpts = [rank_checkpoints(run_dirs[k], k) for k in range(RANKS)]
    (step0, final0), (step1, final1) = ckpts[0][-1], ckpts[1][-1]
    assert step0 == step1 == EPOCHS * STEPS
    for name in replay["names"]:
        np.testing.assert_array_equal(final0[name].asnumpy(), final1[name].asnumpy(), err_msg=name)
        assert not np.allclose(final0[name].asnumpy(), replay["init"][name]), name
    for k in range(RANKS):
        losses = [v for *_, v in logged_losses(run_dirs[k] / "logs" / f"worker_{k}.log")]
        first, last = np.mean(losses[:STEPS]), np.mean(losses[-STEPS:])
        assert last < first / 2, (k, losses)
