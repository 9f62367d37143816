"""Serve captcha reading over HTTP: ``python serve.py --checkpoint_path pretrained/warpctc.ckpt``.

The models are loaded once; ``POST /predict`` reads images sent as multipart fields named
``image`` or as JSON ``{"images": [base64, ...]}``, batching concurrent requests together. ``GET /``
is a page to read dropped or pasted captchas; with ``--label_dir FOLDER`` it labels the folder's
images one by one into ``FOLDER/labels.tsv``. Several models: repeat ``--checkpoint_path NAME=CKPT``
(the first is the default; ``?model=NAME`` picks another). It binds to 127.0.0.1; another ``--host``
needs ``--token`` (or ``WARPCTC_SERVE_TOKEN``), checked as ``Authorization: Bearer`` on every API
request. README, "Serving".
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from typing import List, Optional, Sequence, Tuple

from src.captcha_spec import READING_FIELDS
from src.cli import report_error
from src.config import SERVE_FIELDS, ServingConfig, add_config_arguments, config_from_args, explicit_overrides
from src.run.runtime import PLATFORMS
from src.serve.app import is_loopback

TOKEN_VARIABLE = "WARPCTC_SERVE_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve WarpCTC captcha models over HTTP, with a reading and "
                                                 "labelling page.")
    parser.add_argument("--checkpoint_path", action="append", required=True, metavar="[NAME=]CKPT",
                        help="a checkpoint to serve, named NAME (default: the file name without .ckpt); repeat for "
                             "several models, the first is the default")
    parser.add_argument("--label_dir", default=None,
                        help="a folder of images to label on the page, least confident first, into its labels.tsv")
    parser.add_argument("--token", default=None,
                        help=f"the bearer token every API request must send (default: ${TOKEN_VARIABLE}); needed "
                             f"when --host is not loopback")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="device to run on (default: CPU)")
    parser.add_argument("--device_id", type=int, default=None, help="device index (Ascend/GPU)")
    parser.add_argument("--quiet", action="store_true", help="no start-up lines on stderr")
    return add_config_arguments(parser, names=SERVE_FIELDS + ("max_pixels",) + READING_FIELDS)


def parse_models(values: Sequence[str]) -> List[Tuple[str, str]]:
    """``(name, path)`` of each ``--checkpoint_path [NAME=]CKPT``; ValueError for a duplicate name or missing file."""
    models: List[Tuple[str, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or os.path.exists(value):
            name, path = os.path.splitext(os.path.basename(value))[0], value
        if not name or not path:
            raise ValueError(f"--checkpoint_path {value!r}: expected CKPT or NAME=CKPT")
        if any(name == known for known, _ in models):
            raise ValueError(f"--checkpoint_path {value!r}: a model named {name!r} is already given; name them "
                             f"NAME=CKPT")
        if not os.path.isfile(path):
            raise ValueError(f"--checkpoint_path {path}: no such file")
        models.append((name, path))
    return models


def serve_token(args: argparse.Namespace, host: str) -> Optional[str]:
    """The token to check, from --token or the environment; ValueError when a non-loopback host has none."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE) or None
    if token is not None and (len(token) < 8 or any(char.isspace() for char in token)):
        raise ValueError("--token must be at least 8 characters without spaces")
    if token is None and not is_loopback(host):
        raise ValueError(f"--host {host} is reachable from other machines: give --token (or ${TOKEN_VARIABLE})")
    return token


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before the server starts so a taken port is one line."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # without it Nagle's algorithm and the client's delayed ACK add ~40 ms to a keep-alive answer.
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind((host, port))
        listener.listen(128)
    except OSError as err:
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    return listener


def read_pending(store, model, batcher, max_pixels: int) -> None:
    """The model's reading of every image of the labelling folder still to label, added to ``store`` one
    batch at a time, through ``batcher`` (so a /predict request waits for one batch at most). Run in
    the background: the page is up at once, however large the folder. An image over ``max_pixels``
    (--max_pixels, as for /predict) or unreadable is shown without a reading."""
    names, arrays = [], []

    def flush() -> None:
        results = [future.result() for future in batcher.submit(model, arrays)]
        store.add_readings(dict(zip(names, results)))
        names.clear()
        arrays.clear()

    try:
        for name in store.pending():
            try:
                arrays.append(model.prepare(store.image_bytes(name), name, max_pixels))
            except (OSError, ValueError) as err:
                print(f"serve.py: {name}: cannot be read by the model ({err}); shown without a reading",
                      file=sys.stderr, flush=True)
                continue
            names.append(name)
            if len(names) == model.sizes[-1]:
                flush()
        if names:
            flush()
    except Exception as err:  # noqa: BLE001 -- the page still works, without the readings not yet made
        print(f"serve.py: reading the labelling folder stopped ({type(err).__name__}: {err}); the images not yet "
              f"read are shown without a reading", file=sys.stderr, flush=True)
    finally:
        store.finish_readings()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args, ServingConfig)
        token = serve_token(args, cfg.host)
        checkpoints = parse_models(args.checkpoint_path)
        if args.label_dir is not None and not os.path.isdir(args.label_dir):
            raise ValueError(f"--label_dir {args.label_dir}: not a folder")
        if args.label_dir is not None:
            from src.run.lock import hold_label_folder

            label_lock = hold_label_folder(args.label_dir)      # noqa: F841 -- held until the process ends

        import uvicorn

        from src.run.runtime import set_up
        from src.serve.app import create_app
        from src.serve.backends import ServedModel
        from src.serve.batcher import Batcher

        set_up(args.platform, device_id=args.device_id)
        models = {}
        # Only a reading option (--ignore_case, --read_charset, --read_classes) may differ from a checkpoint's record.
        reading = [name for name in explicit_overrides(args) if name in READING_FIELDS]
        for name, path in checkpoints:
            models[name] = ServedModel(name, path, cfg, args.platform, given=reading)
        store = None
        if args.label_dir is not None:
            from src.serve.labelling import LabelStore

            default = next(iter(models.values()))
            store = LabelStore(args.label_dir, default.spec)
        listener = bind(cfg.host, cfg.port)
        batcher = Batcher(cfg.max_batch, cfg.max_wait_ms)
        if store is not None:
            threading.Thread(target=read_pending, args=(store, default, batcher, cfg.max_pixels),
                             name="label-reader", daemon=True).start()
        app = create_app(models, cfg, batcher, token=token, store=store)
    except ValueError as err:
        return report_error("serve.py", err)
    if not args.quiet:
        names = ", ".join(f"{name} ({model.backend.name})" for name, model in models.items())
        print(f"serve.py: {names} at http://{cfg.host}:{cfg.port}/ (API docs at /docs)", file=sys.stderr, flush=True)
        if store is not None:
            counts = store.counts()
            print(f"serve.py: labelling {args.label_dir}: {counts['labelled']} of {counts['total']} labelled",
                  file=sys.stderr, flush=True)
    from src.serve.http_guard import guarded_protocol

    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                                           http=guarded_protocol(cfg.header_timeout, cfg.max_connections),
                                           timeout_keep_alive=5))
    try:
        server.run(sockets=[listener])
    finally:
        batcher.close()
    return 0 if server.started else 2


if __name__ == "__main__":
    sys.exit(main())
