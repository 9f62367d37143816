"""Render the captcha dataset: ``<out>/train`` and ``<out>/test`` folders of PNG files.

What is rendered comes from the same :class:`src.config.Config` as training (``--config_path``,
``--charset``, ``--max_captcha_digits``, ``--captcha_width``, ``--captcha_height``, ``--seed``,
and the style options of ``src/data/render.py``, whose renderer draws every image): labels of
1..``max_captcha_digits`` characters of the alphabet, length and characters uniform.
Each file is ``<zero-padded index>-<label>.png``; the label is the part after the first
``-``. The same ``--seed`` gives the same labels and byte-identical images whatever the
number of worker processes. A split is rendered into a hidden staging folder and swapped
in only when complete, so a re-run never leaves old and new images mixed; a split that fails
(full disk, read-only folder) leaves the previous one as it was. Every split carries a
``manifest.json`` saying how it was rendered (see ``src/data/manifest.py``); an existing folder is
replaced only when it is empty or that manifest vouches for everything in it, so a user's own
images are never deleted (see :func:`check_replaceable`). Staging folders left
by a killed run are removed by the next run, and worker processes die with their parent.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib.metadata
import itertools
import multiprocessing
import os
import random
import re
import shutil
import signal
import stat
import sys
import time
from typing import Iterable, Iterator, List, Optional, Tuple

from src.captcha_spec import CaptchaSpec
from src.cli import report_error
from src.config import add_config_arguments, config_from_args
from src.data.manifest import MANIFEST_NAME, read_manifest, write_manifest
from src.data.render import MIN_LENGTH, STYLE_FIELDS, Renderer, RenderStyle, sample_label

# The Config fields that decide what is rendered; the others belong to training.
RENDER_FIELDS = ("charset", "max_captcha_digits", "captcha_width", "captcha_height", "seed") + STYLE_FIELDS
FILE_RE = re.compile(r"^\d+-(?P<label>.+)\.png$")
INDEX_RE = re.compile(r"^(?P<index>\d+)-.+\.png$")
# Hidden folders of a run in progress: the split being rendered, and the split it replaces.
LEFTOVER_RE = re.compile(r"^\.(?P<split>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")


def plan_split(count: int, spec: CaptchaSpec, seed: int, split: str) -> List[Tuple[str, str]]:
    """File names and labels of one split, a pure function of (count, alphabet, max length, seed, split)."""
    return list(_plan(count, spec, seed, split))


def _plan(count: int, spec: CaptchaSpec, seed: int, split: str) -> Iterator[Tuple[str, str]]:
    rng = random.Random(f"warpctc-labels-{seed}-{split}")
    width = len(str(count))
    for index in range(count):
        label = sample_label(rng, spec)
        yield f"{index:0{width}d}-{label}.png", label


def image_seed(seed: int, split: str, index: int) -> str:
    """The seed image ``index`` of a split is drawn from (see :meth:`src.data.render.Renderer.render`)."""
    return f"warpctc-image-{seed}-{split}-{index}"


def check_file_names(spec: CaptchaSpec) -> None:
    """ValueError unless every character of the alphabet can be part of a file name."""
    if "/" in spec.charset:
        raise ValueError(f"--charset {spec.charset!r} holds '/', which cannot be part of a file name "
                         f"(process_data.py names each image <index>-<label>.png)")


_RENDERER: Optional[Renderer] = None
_PARENT_PID: Optional[int] = None


def _init_worker(parent_pid: int, renderer: Renderer) -> None:
    """Pool initializer: make the worker die with the process that started it; keep its renderer."""
    global _PARENT_PID, _RENDERER
    _PARENT_PID, _RENDERER = parent_pid, renderer
    # The parent turns SIGTERM into a clean exit and handles Ctrl-C; in a worker either would
    # only print a traceback, and Pool.terminate() stops workers with SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _render_one(job: Tuple[str, str, str]) -> None:
    """A pool worker's job: render and write one image with the worker's renderer."""
    # Covers a parent killed before the initializer ran, and platforms without prctl.
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)
    _write_image(_RENDERER, job)


def _write_image(renderer: Renderer, job: Tuple[str, str, str]) -> None:
    path, label, seed = job
    image = renderer.render(label, seed)
    try:
        image.save(path, format="PNG")
    except OSError as err:
        # Pillow's error often lacks the file name (e.g. ENOSPC on close); the report needs it.
        raise OSError(err.errno, err.strerror or str(err), path) from None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not); when unsure, True."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_leftovers(parent: str) -> List[str]:
    """Clear the hidden folders that killed runs left in ``parent``; returns what was done.

    Only folders whose process is gone are touched, so a concurrent run keeps its staging
    folder. An unfinished split is deleted; a replaced split is deleted if the new one took
    its place, else put back (the run died between the two renames of the swap).
    """
    done = []
    for name in sorted(os.listdir(parent)):
        match = LEFTOVER_RE.match(name)
        path = os.path.join(parent, name)
        if not match or not os.path.isdir(path) or _pid_alive(int(match.group("pid"))):
            continue
        target = os.path.join(parent, match.group("split"))
        if match.group("kind") == "old" and not os.path.exists(target):
            os.rename(path, target)
            done.append(f"restored {target} from {name} (left by process {match.group('pid')}, now gone)")
        else:
            shutil.rmtree(path)
            done.append(f"removed {path} (left by process {match.group('pid')}, now gone)")
    return done


def _swap_in(staging: str, out_dir: str) -> None:
    """Put the complete ``staging`` folder in place of ``out_dir`` (which may not exist)."""
    if not os.path.exists(out_dir):
        os.rename(staging, out_dir)
        return
    retired = os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.old-{os.getpid()}")
    os.rename(out_dir, retired)
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(retired, out_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    if os.path.exists(retired):
        print(f"process_data.py: warning: could not delete the replaced split {retired}; "
              f"the next run removes it", file=sys.stderr)


def check_replaceable(out_dir: str) -> None:
    """ValueError naming ``out_dir`` unless the existing folder may be replaced by a new split.

    An empty folder may be filled. Any other must be a split that process_data.py wrote: its
    manifest is valid, and every other entry is a regular file among those the manifest's split
    was rendered as (recomputed from its count, seed, split, alphabet and length). Anything else
    may be a user's own data, which is never deleted.
    """
    names = os.listdir(out_dir)
    if not names:
        return
    refuse = "refusing to replace it, choose another --output_dir"
    advice = ("refusing to replace the folder (process_data.py replaces only a split its manifest describes); "
              "delete it yourself to re-render it")
    manifest = read_manifest(out_dir, advice=advice)
    if manifest is None:
        raise ValueError(f"{out_dir}: holds files that process_data.py did not write (e.g. {min(names)}) and no "
                         f"{MANIFEST_NAME}; {refuse}")
    path = os.path.join(out_dir, MANIFEST_NAME)
    try:
        spec = CaptchaSpec(charset=manifest["alphabet"], max_length=manifest["max_length"], width=manifest["width"],
                           height=manifest["height"])
        if manifest["count"] <= 0:
            raise ValueError(f"'count' is {manifest['count']}")
    except ValueError as err:
        raise ValueError(f"{path}: damaged dataset manifest ({err}); {advice}") from None
    count = manifest["count"]
    width = len(str(count))
    # Only names of the split's own form can be its files; labels are recomputed up to the largest
    # index present, which is below the count the split was rendered with.
    indices = [int(match.group("index")) for match in map(INDEX_RE.match, names)
               if match and len(match.group("index")) == width and int(match.group("index")) < count]
    written = {name for name, _ in itertools.islice(
        _plan(count, spec, manifest["seed"], manifest["split"]), max(indices, default=-1) + 1)}
    written.add(MANIFEST_NAME)
    foreign = sorted(name for name in names
                     if name not in written or not stat.S_ISREG(os.lstat(os.path.join(out_dir, name)).st_mode))
    if foreign:
        raise ValueError(f"{out_dir}: holds files that process_data.py did not write (e.g. {foreign[0]}) beside the "
                         f"split its {MANIFEST_NAME} describes; {refuse}")


def render_split(out_dir: str, count: int, *, spec: CaptchaSpec = CaptchaSpec(), seed: int = 1,
                 split: str = "train", workers: int = 1, progress: bool = True,
                 style: RenderStyle = RenderStyle()) -> List[str]:
    """Render ``count`` captchas of ``spec`` in ``style`` into ``out_dir`` (replaced as a whole) and
    return the file names.

    Bad arguments and environment failures (a full disk, a read-only folder) raise ValueError
    with a one-line message naming the path; an existing ``out_dir`` is then left as it was.
    """
    if count <= 0:
        raise ValueError(f"--{split}_count must be positive, got {count}")
    check_file_names(spec)
    renderer = Renderer(spec, style)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"{out_dir}: exists and is not a folder")
        check_replaceable(out_dir)
    kept = "the existing folder is left as it was" if os.path.exists(out_dir) else "nothing was written"
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        for note in remove_leftovers(parent):
            print(f"process_data.py: {note}", file=sys.stderr)
        staging = os.path.join(parent, f".{os.path.basename(out_dir)}.partial-{os.getpid()}")
        os.makedirs(staging)
    except OSError as err:
        raise ValueError(f"{out_dir}: cannot write in {err.filename or parent}: {err.strerror or err}; "
                         f"{kept}") from None
    plan = plan_split(count, spec, seed, split)
    jobs = [(os.path.join(staging, name), label, image_seed(seed, split, i)) for i, (name, label) in enumerate(plan)]
    try:
        _run_jobs(jobs, renderer, workers, split, progress)
        # Written last: a staging folder with a manifest is complete.
        write_manifest(staging, {
            "split": split, "count": count, "seed": seed, "width": spec.width, "height": spec.height,
            "min_length": MIN_LENGTH, "max_length": spec.max_length, "alphabet": spec.charset,
            "captcha_version": importlib.metadata.version("captcha"),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "style": style.changes()})
        _swap_in(staging, out_dir)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        where = f" (writing {err.filename})" if err.filename else ""
        raise ValueError(f"{out_dir}: rendering failed: {err.strerror or err}{where}; {kept}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [name for name, _ in plan]


def _run_jobs(jobs: List[tuple], renderer: Renderer, workers: int, split: str, progress: bool) -> None:
    total = len(jobs)
    start = time.time()
    step = max(1, total // 20)

    def report(done: int) -> None:
        if progress and (done % step == 0 or done == total):
            rate = done / max(time.time() - start, 1e-9)
            print(f"[{split}] {done}/{total} images ({rate:.0f} images/s)", file=sys.stderr, flush=True)

    if workers <= 1:
        for done, job in enumerate(jobs, 1):
            _write_image(renderer, job)
            report(done)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(os.getpid(), renderer)) as pool:
        for done, _ in enumerate(pool.imap_unordered(_render_one, jobs, chunksize=64), 1):
            report(done)


class Terminated(Exception):
    """SIGTERM, turned into an exception so that the staging folder is removed on the way out."""


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def build_parser() -> argparse.ArgumentParser:
    """process_data.py's options: its own, then the Config fields of RENDER_FIELDS."""
    parser = argparse.ArgumentParser(
        description="Render the WarpCTC captcha dataset (<output_dir>/train and <output_dir>/test).")
    parser.add_argument("--output_dir", default="data", help="folder that receives train/ and test/ (default: data)")
    parser.add_argument("--train_count", type=int, default=50000, help="number of training images (default: 50000)")
    parser.add_argument("--test_count", type=int, default=10000, help="number of test images (default: 10000)")
    parser.add_argument("--splits", default="train,test",
                        help="comma-separated splits to render: train, test or both (default: train,test)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: the CPU count, here %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="do not print progress")
    return add_config_arguments(parser, RENDER_FIELDS)


def parse_splits(text: str) -> List[str]:
    splits = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in splits if s not in ("train", "test")]
    if bad or not splits:
        raise ValueError(f"--splits: expected train and/or test, got {text!r}")
    return splits


def main(argv: Iterable[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        cfg = config_from_args(args)
        spec = CaptchaSpec.from_config(cfg)
        style = RenderStyle.from_config(cfg)
        if args.workers <= 0:
            raise ValueError(f"--workers must be positive, got {args.workers}")
        for split in parse_splits(args.splits):
            count = args.train_count if split == "train" else args.test_count
            start = time.time()
            out = os.path.join(args.output_dir, split)
            render_split(out, count, spec=spec, seed=cfg.seed, split=split, workers=args.workers,
                         progress=not args.quiet, style=style)
            elapsed = time.time() - start
            look = "" if not style.changes() else f", {style.describe()}"
            print(f"{split}: {count} images in {os.path.abspath(out)} "
                  f"({elapsed:.1f} s, {count / max(elapsed, 1e-9):.0f} images/s{look})", flush=True)
    except ValueError as err:
        return report_error("process_data.py", err)
    except (KeyboardInterrupt, Terminated) as err:
        name = "SIGINT" if isinstance(err, KeyboardInterrupt) else str(err)
        report_error("process_data.py", RuntimeError(
            f"interrupted by {name}; the split being rendered was not written, earlier ones are complete"))
        return 128 + signal.Signals[name].value
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
