"""Both network families side by side, on this machine, in one run: training and inference speed.

For each network (each in its own process: the crnn caps oneDNN's instruction set, see
src/models/) it measures, after warm-up and reading every result back:

- the training step train.py builds (the config's optimizer, clip 10, batch 64) and a PyTorch replica
  of the same network, loss and optimizer (``bench.common.torch_train_step``): s/step each and their ratio;
- inference at batch 64: the MindSpore network, and the same network exported to ONNX and run by
  onnxruntime: images/s each;
- eval.py end to end (images from PNG files, the pipeline, decoding) on ``--images`` rendered
  captchas: images/s;
- FLOP per image (bench/network_flops.py) and the share of numpy's fp32 matmul peak.

    pip install -r bench/requirements.txt      # torch for the replica
    python bench/bench_networks.py [--steps 5] [--images 1000] [config options]

The crnn defaults are src/config.py's; give ``--crnn_channels`` etc. to time another design.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import batch_arrays as batch, cpu_model, eval_throughput, matmul_peak_gflops, time_steps  # noqa: E402
from bench.common import torch_train_step  # noqa: E402
from bench.network_flops import forward_flop  # noqa: E402
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.config import CONFIG_FIELDS, add_config_arguments, config_from_args, explicit_overrides  # noqa: E402


def median_seconds(step, warmup: int, repeats: int) -> float:
    return float(np.median(time_steps(step, repeats, warmup)))


def measure(cfg, args) -> dict:
    """Every figure of one network, in this process."""
    import mindspore as ms

    from src.checkpoint.model import model_record
    from src.run.runtime import set_up
    from src.warpctc_for_train import build_train_cell

    spec = CaptchaSpec.from_config(cfg)
    set_up("CPU")
    images, labels = batch(spec, cfg.batch_size)
    net, cell, _ = build_train_cell(cfg, "CPU", steps_per_epoch=1000)
    x, y = ms.Tensor(images), ms.Tensor(labels)
    row = {"network": cfg.network, "parameters": int(sum(p.size for p in net.trainable_params())),
           "ctc_steps": net.sequence_length, "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", "none")}
    row["mindspore_s_per_step"] = median_seconds(lambda: cell(x, y).asnumpy(), 2, args.steps)
    net.set_train(False)
    row["mindspore_images_per_s"] = cfg.batch_size / median_seconds(lambda: net(x).asnumpy(), 2, args.steps * 2)

    try:
        step = torch_train_step(cfg, spec, images, labels, os.cpu_count() or 1)
    except ImportError:
        step = None
    if step is not None:
        row["torch_s_per_step"] = median_seconds(step, 2, args.steps)
        row["step_ratio_mindspore_over_torch"] = row["mindspore_s_per_step"] / row["torch_s_per_step"]

    with tempfile.TemporaryDirectory(prefix="bench_networks_") as scratch:
        ckpt = os.path.join(scratch, "net.ckpt")
        ms.save_checkpoint(net, ckpt, append_dict=model_record(spec, net.architecture))
        onnx_path = os.path.join(scratch, "net.onnx")
        ms.export(net, x, file_name=onnx_path[:-5], file_format="ONNX")
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: images}
        row["onnxruntime_images_per_s"] = cfg.batch_size / median_seconds(lambda: session.run(None, feed), 2,
                                                                          args.steps * 2)
        row["onnxruntime_over_mindspore"] = row["onnxruntime_images_per_s"] / row["mindspore_images_per_s"]
        row["eval_images_per_s"] = eval_throughput(cfg, spec, ckpt, scratch, args.images)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per network (default 5)")
    parser.add_argument("--images", type=int, default=1000, help="rendered captchas for eval.py (default 1000)")
    parser.add_argument("--only", default=None, choices=("warpctc", "crnn"),
                        help="measure only this network, in this process (what the driver runs)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.only:
        row = measure(dataclasses.replace(cfg, network=args.only), args)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    peak, library = matmul_peak_gflops()
    print(f"machine: {cpu_model()}; {library} fp32 4096^3 matmul {peak:.0f} GFLOP/s; "
          f"batch {cfg.batch_size}, captchas {CaptchaSpec.from_config(cfg).describe()}", flush=True)
    options = [f"--{name}={value}" for name, value in explicit_overrides(args).items() if name in CONFIG_FIELDS]
    for network in ("warpctc", "crnn"):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--only", network, "--steps",
                               str(args.steps), "--images", str(args.images), *options],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
        rows = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not rows:
            print(f"{network}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        row = json.loads(rows[0])
        flop = forward_flop(dataclasses.replace(cfg, network=network), CaptchaSpec.from_config(cfg))["total"]
        step_gflop = 3 * flop * cfg.batch_size / 1e9
        row["forward_mflop_per_image"] = flop / 1e6
        row["train_gflops"] = step_gflop / row["mindspore_s_per_step"]
        row["train_share_of_matmul_peak"] = row["train_gflops"] / peak
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
