"""Screen adaptation recipes on a GPU with a PyTorch replica of the fine-tuning step.

Not part of the product and not run by CI (PyTorch is not a dependency): it ranks recipes for
``configs/adapt.yaml`` quickly, and only the chosen one is then measured with ``train.py`` on the
CPU. Two steps:

    # here, with MindSpore: a checkpoint's weights as .npz (the names are PyTorch's already)
    python research/adapt_search_torch.py convert pretrained/warpctc.ckpt base.npz
    # on the GPU machine, with PyTorch and the captcha package
    python research/adapt_search_torch.py run --base base.npz --adapt ink/adapt1000 --test ink/test1000 \
        --sanity data/test --jobs jobs.json --out results

The replica: BGR pixels rescaled and normalised as ``src.dataset`` does ("fixed" or "per_image"),
every pixel column a time step of the two-layer LSTM, the dense layer, CTC averaged over the batch,
Adam, ``src.lr_schedule.get_lr``'s cosine with warm-up, global-norm clipping 10, fp32. A job
reads per epoch every labelled image once (augmented anew by ``src.data.render.Renderer.augment``
when ``augment``) plus ``synthetic`` captchas of the adaptation style, drawn from a pool
rendered once by ``src.data.render.Renderer`` (the CPU run draws new ones every epoch).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.config import Config  # noqa: E402
from src.data.images import load_bgr  # noqa: E402
from src.data.labels import list_samples  # noqa: E402
from src.dataset import MEAN, PER_IMAGE_STD_FLOOR, STD  # noqa: E402
from src.lr_schedule import get_lr  # noqa: E402
from src.data.render import Renderer, RenderStyle, sample_label  # noqa: E402

SPEC = CaptchaSpec()


@dataclass
class Job:
    name: str
    adapt: str = "adapt1000"          # base name of one of the --adapt folders
    test: str = "test1000"            # base name of one of the --test folders
    steps: int = 700
    lr: float = 5e-4
    warmup: int = 50
    synthetic: int = 500              # rendered captchas per epoch
    augment: bool = True
    normalization: str = "per_image"
    freeze_layer0: bool = False       # train only LSTM layer 2 and the dense layer
    seed: int = 1
    batch: int = 64


def adapt_style() -> RenderStyle:
    """The style of configs/adapt.yaml (its rendering and augmentation options)."""
    import yaml

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "adapt.yaml")
    values = yaml.safe_load(open(path))
    return RenderStyle.from_config(Config(**{k: v for k, v in values.items() if k in Config.__dataclass_fields__}))


_RENDERER = []


def _renderer() -> Renderer:
    if not _RENDERER:
        _RENDERER.append(Renderer(SPEC, adapt_style()))
    return _RENDERER[0]


def _augmented(args):
    path, draws, seed = args
    from PIL import Image

    image = load_bgr(path)
    renderer = _renderer()
    rgb = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0)[::-1])
    return np.stack([np.asarray(renderer.augment(rgb, random.Random(f"{seed}-{path}-{d}"), fill))[:, :, ::-1]
                     for d in range(draws)])


def _rendered(index):
    renderer = _renderer()
    label = sample_label(random.Random(f"pool-label-{index}"), SPEC)
    return renderer.render_bgr(label, f"pool-image-{index}"), SPEC.encode(label)


def load_folder(folder):
    samples = list_samples(folder, SPEC)
    return (np.stack([load_bgr(p) for p, _ in samples]),
            np.stack([SPEC.encode(label) for _, label in samples]).astype(np.int64), [p for p, _ in samples])


def convert(checkpoint: str, out: str) -> None:
    from src.checkpoint.files import read_checkpoint

    params = read_checkpoint(checkpoint)
    np.savez(out, **{k: v.asnumpy() for k, v in params.items() if k.startswith(("lstm.", "fc."))})


def run(args) -> None:
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    jobs = [Job(**j) for j in json.load(open(args.jobs))]
    t0 = time.time()
    folders = {os.path.basename(f.rstrip("/")): load_folder(f) for f in args.adapt}
    tests = {os.path.basename(f.rstrip("/")): load_folder(f)[:2] for f in args.test}
    sanity = load_folder(args.sanity) if args.sanity else None
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        pool_items = pool.map(_rendered, range(args.pool), chunksize=64)
        augmented = {}
        for key, (_, _, paths) in folders.items():
            draws = max(1, -(-max(j.steps for j in jobs) * 64 // len(paths)))
            augmented[key] = np.stack(pool.map(_augmented, [(p, draws, 1) for p in paths], chunksize=16))
    syn_x = torch.from_numpy(np.stack([x for x, _ in pool_items])).to(dev)
    syn_y = torch.from_numpy(np.stack([y for _, y in pool_items]).astype(np.int64)).to(dev)
    print(f"data ready in {time.time() - t0:.1f} s: pool {args.pool}, "
          + ", ".join(f"{k}: {v.shape}" for k, v in augmented.items()), flush=True)
    base = np.load(args.base)
    mean = torch.tensor(MEAN, device=dev).view(1, 1, 1, 3)
    std = torch.tensor(STD, device=dev).view(1, 1, 1, 3)

    def features(x_uint8, normalization):
        x = x_uint8.float() / 255.0
        if normalization == "per_image":
            m = x.mean(dim=(1, 2), keepdim=True)
            s = x.std(dim=(1, 2), keepdim=True, unbiased=False).clamp_min(PER_IMAGE_STD_FLOOR)
            x = (x - m) / s
        else:
            x = (x - mean) / std
        b, h, w, c = x.shape
        return x.permute(2, 0, 1, 3).reshape(w, b, h * c)

    for job in jobs:
        torch.manual_seed(job.seed)
        lstm = torch.nn.LSTM(SPEC.input_height * 3, 512, num_layers=2).to(dev)
        fc = torch.nn.Linear(512, SPEC.num_classes).to(dev)
        with torch.no_grad():
            for name, p in list(lstm.named_parameters()):
                p.copy_(torch.from_numpy(base[f"lstm.{name}"]))
            fc.weight.copy_(torch.from_numpy(base["fc.weight"]))
            fc.bias.copy_(torch.from_numpy(base["fc.bias"]))
        params = [p for n, p in lstm.named_parameters() if not (job.freeze_layer0 and n.endswith("_l0"))]
        params += list(fc.parameters())
        opt = torch.optim.Adam(params, lr=job.lr)

        def logits(x):
            y, _ = lstm(features(x, job.normalization))
            return fc(y)

        def accuracy(x_all, y_all):
            right = 0
            with torch.no_grad():
                for s in range(0, len(x_all), 500):
                    pred = logits(torch.from_numpy(x_all[s:s + 500]).to(dev)).argmax(-1).T.cpu().numpy()
                    for row, lab in zip(pred, y_all[s:s + 500]):
                        keep = np.concatenate([[True], row[1:] != row[:-1]])
                        right += [int(v) for v in row[keep] if v != SPEC.blank] == [int(v) for v in lab
                                                                                   if v != SPEC.blank]
            return right / len(x_all)

        test_x, test_y = tests[job.test]
        zero = accuracy(test_x, test_y)
        if job.steps == 0:          # the replica's check: the base as it is
            result = {"name": job.name, "zero_shot": zero, **asdict(job)}
            if sanity is not None:
                result["sanity"] = accuracy(sanity[0][:1000], sanity[1][:1000])
            print(json.dumps(result), flush=True)
            continue
        fx, fy, _ = folders[job.adapt]
        aug = torch.from_numpy(augmented[job.adapt]).to(dev)           # (N, draws, H, W, C)
        plain = torch.from_numpy(fx).to(dev)
        labels = torch.from_numpy(fy).to(dev)
        n = len(fx)
        per_epoch = n + job.synthetic
        steps_per_epoch = per_epoch // job.batch
        rates = get_lr(1, steps_per_epoch, job.lr, "cosine", job.warmup, job.steps)
        gen = torch.Generator().manual_seed(job.seed)
        start, step, epoch, syn_pos = time.time(), 0, 0, 0
        while step < job.steps:
            order = torch.randperm(per_epoch, generator=gen)
            for b in range(steps_per_epoch):
                if step >= job.steps:
                    break
                idx = order[b * job.batch:(b + 1) * job.batch]
                folder_idx = idx[idx < n].to(dev)
                k = int((idx >= n).sum())
                syn_idx = (torch.arange(syn_pos, syn_pos + k) % len(syn_x)).to(dev)
                syn_pos += k
                images = aug[folder_idx, epoch % aug.shape[1]] if job.augment else plain[folder_idx]
                x = torch.cat([images, syn_x[syn_idx]])
                y = torch.cat([labels[folder_idx], syn_y[syn_idx]])
                for g in opt.param_groups:
                    g["lr"] = float(rates[step])
                logp = F.log_softmax(logits(x), -1)
                tl = (y != SPEC.blank).sum(1)
                il = torch.full((len(y),), logp.shape[0], dtype=torch.long, device=dev)
                loss = F.ctc_loss(logp, y, il, tl, blank=SPEC.blank, reduction="none").mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                opt.step()
                step += 1
            epoch += 1
        result = {"name": job.name, "zero_shot": zero, "adapted": accuracy(test_x, test_y),
                  "train_s": round(time.time() - start, 1), "loss": round(loss.item(), 4), **asdict(job)}
        if sanity is not None:
            result["sanity"] = accuracy(sanity[0][:1000], sanity[1][:1000])
        print(json.dumps(result), flush=True)
        with open(os.path.join(args.out, "results.jsonl"), "a") as f:
            f.write(json.dumps(result) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("checkpoint")
    c.add_argument("out")
    r = sub.add_parser("run")
    r.add_argument("--base", required=True)
    r.add_argument("--adapt", nargs="+", required=True)
    r.add_argument("--test", nargs="+", required=True)
    r.add_argument("--sanity", default="")
    r.add_argument("--jobs", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--pool", type=int, default=20000)
    args = parser.parse_args()
    if args.command == "convert":
        convert(args.checkpoint, args.out)
    else:
        os.makedirs(args.out, exist_ok=True)
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
