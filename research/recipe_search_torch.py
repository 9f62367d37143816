"""Screen training recipes quickly on a GPU with a PyTorch replica of the WarpCTC step.

Not part of the product and not run by CI (PyTorch is not a dependency). A 60-minute CPU run
tests one recipe; on a GPU this script runs dozens of recipes, several seeds each, in minutes,
so only the promising ones get a MindSpore CPU run. The replica matches ``src/`` where it
matters for learning dynamics: BGR pixels rescaled and normalised with ``src.dataset`` MEAN/STD,
every pixel column a time step of a two-layer LSTM of ``hidden_size`` (PyTorch and MindSpore
share the gate order i, f, g, o and the uniform(+-1/sqrt(H)) init) and a dense layer, the
classes and CTC blank of the captcha spec, CTC averaged over the batch, global-norm clipping,
``src.lr_schedule.get_lr`` and fp32 arithmetic (TF32 off). Final numbers always come from
MindSpore on the CPU (``train.py`` / ``eval.py``).

    python research/recipe_search_torch.py --data data --fresh fresh/test --jobs jobs.json \
        --out results --parallel 6 --deadline_s 400 [--charset ... | --config_path ...]

``jobs.json`` is a list of recipes (see ``Job``); results stream to ``<out>/results.jsonl``
(one line per finished job: full-test and fresh-set accuracy) and ``<out>/curves.jsonl``.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402
from src.config import add_config_arguments, config_from_args  # noqa: E402
from src.data.images import load_bgr  # noqa: E402
from src.data.labels import parse_label  # noqa: E402
from src.dataset import MEAN, STD  # noqa: E402
from src.lr_schedule import get_lr  # noqa: E402

# The replica's captcha and network size come from Config; the recipe is the Job's.
RECIPE_FIELDS = ("charset", "max_captcha_digits", "captcha_width", "captcha_height", "hidden_size")


@dataclass
class Job:
    name: str
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "cosine"          # cosine | step | linear
    warmup: int = 100
    steps: int = 1780
    epoch_size: int = 30              # only for the step schedule
    forget_bias: float = 1.0
    beta2: float = 0.999
    clip: float = 10.0
    batch: int = 64
    seed: int = 1
    weight_decay: float = 0.0
    ema: float = 0.0                  # > 0: also evaluate an exponential moving average of the weights
    eval_every: int = 200
    extra: dict = field(default_factory=dict)


def _load_one(path: str, spec: CaptchaSpec):
    return load_bgr(path), spec.encode(parse_label(path, spec), source=path)


def pack_folder(folder: str, cache_dir: str, name: str, spec: CaptchaSpec) -> str:
    """Decode a folder of ``<index>-<label>.png`` into one ``.npz`` (uint8 BGR images, coded labels).

    The cache file is named after the spec, since the label coding depends on it.
    """
    cache = os.path.join(cache_dir, f"{name}-{hashlib.sha256(spec.to_json().encode()).hexdigest()[:12]}.npz")
    if os.path.exists(cache):
        return cache
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    paths = [os.path.join(folder, n) for n in names]
    with mp.get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
        items = pool.map(functools.partial(_load_one, spec=spec), paths, chunksize=256)
    images = np.stack([i for i, _ in items])
    labels = np.stack([l for _, l in items]).astype(np.int64)
    np.savez(cache, images=images, labels=labels)
    return cache


def lr_table(job: Job, steps_per_epoch: int) -> np.ndarray:
    if job.schedule == "linear":
        total = job.steps
        rates = job.lr * (1.0 - np.arange(total) / total)
        if job.warmup:
            rates = rates * np.minimum(1.0, (np.arange(total) + 1) / job.warmup)
        return rates
    return get_lr(job.epoch_size, steps_per_epoch, job.lr, job.schedule, job.warmup, job.steps).astype(np.float64)


_DATA = {}


def _worker(job_dict, spec: CaptchaSpec, hidden: int, paths, out_dir, hard_deadline):
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    job = Job(**job_dict)
    for key, path in paths.items():
        if key not in _DATA:
            z = np.load(path)
            _DATA[key] = (torch.from_numpy(z["images"]).to(dev), torch.from_numpy(z["labels"]).to(dev))
    train_x, train_y = _DATA["train"]
    mean = torch.tensor(MEAN, device=dev).view(1, 1, 1, 3)
    std = torch.tensor(STD, device=dev).view(1, 1, 1, 3)

    def features(x_uint8):
        x = (x_uint8.float() / 255.0 - mean) / std            # (B, H, W, C)
        b, h, w, c = x.shape
        return x.permute(2, 0, 1, 3).reshape(w, b, h * c)      # (W, B, H*C): row, then channel

    torch.manual_seed(job.seed)
    gen = torch.Generator(device="cpu").manual_seed(job.seed)
    lstm = torch.nn.LSTM(spec.input_height * 3, hidden, num_layers=2).to(dev)
    fc = torch.nn.Linear(hidden, spec.num_classes).to(dev)
    if job.forget_bias:
        with torch.no_grad():
            for layer in range(2):
                getattr(lstm, f"bias_ih_l{layer}")[hidden:2 * hidden] += job.forget_bias
    params = list(lstm.parameters()) + list(fc.parameters())
    if job.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=job.lr, betas=(0.9, job.beta2), eps=1e-8)
    elif job.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=job.lr, betas=(0.9, job.beta2), eps=1e-8, weight_decay=job.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=job.lr, momentum=0.9)
    ema = [p.detach().clone() for p in params] if job.ema else None

    def logits_of(x_uint8):
        y, _ = lstm(features(x_uint8))
        return fc(y)                                           # (W, B, C)

    def accuracy(x_all, y_all, limit=None, weights=None):
        saved = None
        if weights is not None:
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, w in zip(params, weights):
                    p.copy_(w)
        n = len(x_all) if limit is None else min(limit, len(x_all))
        right = 0
        by_len = np.zeros((spec.max_length + 1, 2))
        with torch.no_grad():
            for s in range(0, n, 500):
                pred = logits_of(x_all[s:s + 500]).argmax(-1).T.cpu().numpy()     # (B, W)
                gold = y_all[s:s + 500].cpu().numpy()
                for row, lab in zip(pred, gold):
                    keep = np.concatenate([[True], row[1:] != row[:-1]])
                    seq = [int(v) for v in row[keep] if v != spec.blank]
                    truth = [int(v) for v in lab if v != spec.blank]
                    ok = seq == truth
                    right += ok
                    by_len[len(truth)] += (ok, 1)
        if saved is not None:
            with torch.no_grad():
                for p, w in zip(params, saved):
                    p.copy_(w)
        return right / n, [round(a / max(t, 1), 5) for a, t in by_len[1:]]

    steps_per_epoch = len(train_x) // job.batch
    rates = lr_table(job, steps_per_epoch)
    test_x, test_y = _DATA["test"]
    start = time.time()
    perm, pos = None, steps_per_epoch
    aborted = False
    for step in range(job.steps):
        if pos >= steps_per_epoch:
            perm, pos = torch.randperm(len(train_x), generator=gen).to(dev), 0
        idx = perm[pos * job.batch:(pos + 1) * job.batch]
        pos += 1
        for g in opt.param_groups:
            g["lr"] = float(rates[step])
        logp = F.log_softmax(logits_of(train_x[idx]), -1)
        lab = train_y[idx]
        tl = (lab != spec.blank).sum(1)
        il = torch.full((len(idx),), logp.shape[0], dtype=torch.long, device=dev)
        loss = F.ctc_loss(logp, lab, il, tl, blank=spec.blank, reduction="none").mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, job.clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.mul_(job.ema).add_(p.detach(), alpha=1 - job.ema)
        if (step + 1) % job.eval_every == 0 or step + 1 == job.steps:
            acc, _ = accuracy(test_x, test_y, limit=2000)
            with open(os.path.join(out_dir, "curves.jsonl"), "a") as f:
                f.write(json.dumps({"name": job.name, "step": step + 1, "loss": loss.item(), "acc2000": acc}) + "\n")
        if time.time() > hard_deadline:
            aborted = True
            break
    result = {"name": job.name, "job": asdict(job), "steps_done": step + 1, "aborted": aborted,
              "train_s": round(time.time() - start, 1), "final_loss": loss.item(),
              "ms_per_step": round(1000 * (time.time() - start) / (step + 1), 2)}
    for key in ("test", "fresh"):
        if key in _DATA:
            result[key], result[key + "_by_len"] = accuracy(*_DATA[key])
            if ema is not None:
                result[key + "_ema"], _ = accuracy(*_DATA[key], weights=ema)
    with open(os.path.join(out_dir, "results.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "job"}), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with train/ and test/ from process_data.py")
    parser.add_argument("--fresh", default="", help="optional folder of never-seen captchas")
    parser.add_argument("--jobs", required=True, help="JSON list of Job fields")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", default="/tmp/warpctc_packed")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--deadline_s", type=float, default=400.0, help="no job starts after this; jobs stop at +60 s")
    add_config_arguments(parser, RECIPE_FIELDS)
    args = parser.parse_args()
    try:
        cfg = config_from_args(args)
        spec = CaptchaSpec.from_config(cfg)
        if spec.height != spec.input_height:
            # src.dataset resizes such images to input_height; the replica feeds pixels as they are.
            raise ValueError(f"--captcha_height {spec.height}: the replica reads only heights that are a "
                             f"multiple of 16 (the network resizes to {spec.input_height})")
    except ValueError as err:
        return report_error("recipe_search_torch.py", err)
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.cache, exist_ok=True)
    paths = {"train": pack_folder(os.path.join(args.data, "train"), args.cache, "train", spec),
             "test": pack_folder(os.path.join(args.data, "test"), args.cache, "test", spec)}
    if args.fresh:
        paths["fresh"] = pack_folder(args.fresh, args.cache, "fresh", spec)
    print(f"packed in {time.time() - t0:.1f} s; captchas {spec.describe()}, hidden {cfg.hidden_size}", flush=True)
    with open(args.jobs) as f:
        jobs = [Job(**j) for j in json.load(f)]
    deadline = t0 + args.deadline_s
    # Fail fast (one short job in this process) before fanning out; also gives the step time.
    _worker(asdict(Job(name="smoke", steps=40, eval_every=20)), spec, cfg.hidden_size, paths, args.out,
            deadline + 60)
    _DATA.clear()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.parallel) as pool:
        pending = []
        for job in jobs:
            pending.append(pool.apply_async(_run_if_time, (asdict(job), spec, cfg.hidden_size, paths, args.out,
                                                           deadline)))
        for p in pending:
            p.wait()
    print(f"all done in {time.time() - t0:.1f} s", flush=True)
    return 0


def _run_if_time(job_dict, spec: CaptchaSpec, hidden: int, paths, out_dir, deadline):
    if time.time() > deadline:
        print(f"skipped {job_dict['name']} (deadline)", flush=True)
        return None
    try:
        return _worker(job_dict, spec, hidden, paths, out_dir, deadline + 60)
    except Exception as err:  # keep the pool going; report the failure
        print(f"FAILED {job_dict['name']}: {type(err).__name__}: {err}", flush=True)
        return None


if __name__ == "__main__":
    sys.exit(main())
