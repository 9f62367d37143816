"""serve.py's HTTP application (FastAPI): reading captchas for programs, and the labelling API of the page.

Every answer is JSON; every refusal is ``{"error": "<one line>"}`` with a 4xx status, after which the
server goes on serving. Request bodies are read up to ``max_bytes`` and never written to disk.
The models come from ``src/serve/backends.py``, the batcher from ``src/serve/batcher.py``, the labelling state from
``src/serve/labelling.py``; this module only speaks HTTP.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import os
from typing import Dict, List, Optional

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from src.data.images import IMAGE_FORMATS
from src.serve.backends import ImageProblem, ServedModel
from src.serve.batcher import Batcher

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web", "index.html")
# Static descriptions that hold no data: a browser cannot send a bearer token to load them.
OPEN_PATHS = ("/", "/healthz", "/docs", "/openapi.json")
LABEL_BODY_LIMIT = 64 * 1024


class RequestProblem(Exception):
    """A refused request: answered ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


async def _read_body(request: Request, limit: int, option: str) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes (announced or streamed)."""
    announced = request.headers.get("content-length")
    if announced is not None:
        if not announced.isdigit():
            raise RequestProblem(f"Content-Length {announced!r} is not a number")
        if int(announced) > limit:
            raise RequestProblem(f"request body of {int(announced):,} bytes is over {option} {limit:,}", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestProblem(f"request body is over {option} {limit:,} bytes", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody reads the answer; it only keeps the traceback out of the log.
        raise RequestProblem("the client went away before sending the whole body") from None
    return b"".join(chunks)


def _parse_json(body: bytes) -> object:
    """The JSON value of ``body``; RequestProblem (400) if it is not JSON or nests too deep to read."""
    try:
        return json.loads(body)
    except RecursionError:
        raise RequestProblem("malformed JSON body (nested too deep)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestProblem(f"malformed JSON body ({err})") from None


def _decode_base64(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise RequestProblem(f"{where} must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):         # a data: URL, as a browser's FileReader gives
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise RequestProblem(f"{where}: a data: URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestProblem(f"{where} is not valid base64") from None


async def _request_images(request: Request, body: bytes, max_images: int) -> List[tuple]:
    """``(name, bytes)`` of each image of a multipart or JSON request, in order."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    images: List[tuple] = []
    if kind == "multipart/form-data":
        boundary = parse_options_header(request.headers.get("content-type", ""))[1].get(b"boundary")
        if not boundary:
            raise RequestProblem("malformed multipart body (its Content-Type names no boundary)")
        if b"--" + boundary + b"--" not in body:
            raise RequestProblem("malformed multipart body (cut off: it does not end with the closing boundary)")

        async def whole_body():
            yield body

        parser = MultiPartParser(request.headers, whole_body(), max_files=max_images + 1, max_fields=max_images + 1)
        # The body is in memory already (under --max_bytes): its files stay there too, never spooled to
        # a temporary file (Starlette's default above 1 MiB), so nothing a request sends is written.
        parser.spool_max_size = len(body) + 1
        try:
            form = await parser.parse()
        except MultiPartException as err:
            raise RequestProblem(f"malformed multipart body ({err.message})") from None
        for key, value in form.multi_items():
            if key != "image":
                raise RequestProblem(f"form field {key!r} is not read; send each image as a file field named image")
            if isinstance(value, str):
                raise RequestProblem(f"form field image #{len(images) + 1} is text, not a file")
            images.append((f"image #{len(images) + 1} ({value.filename or 'no name'})", await value.read()))
    elif kind == "application/json":
        data = _parse_json(body)
        if not isinstance(data, dict) or set(data) != {"images"} or not isinstance(data["images"], list):
            raise RequestProblem('the JSON body must be {"images": ["<base64>", ...]}')
        if len(data["images"]) > max_images:
            raise RequestProblem(f"{len(data['images'])} images in one request, over --max_images {max_images}")
        images = [(f"images[{i}]", _decode_base64(text, f"images[{i}]")) for i, text in enumerate(data["images"])]
    else:
        raise RequestProblem(f"Content-Type {kind or 'none'!r} is not read; send multipart/form-data with fields "
                             f"named image, or application/json {{\"images\": [...]}}", 415)
    if not images:
        raise RequestProblem("no images in the request")
    if len(images) > max_images:
        raise RequestProblem(f"{len(images)} images in one request, over --max_images {max_images}")
    return images


def _host_name(authority: str) -> str:
    """``host`` of ``host[:port]`` or ``[v6]:port``, lower case."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def foreign_request(host_header: str, origin: Optional[str], bound: str) -> str:
    """Why a request comes from elsewhere than this server's own address ("" when it does not).

    Bound to loopback, the Host must be a loopback name. An ``Origin`` (sent by browsers) must be the
    Host's own origin: a page of another site may not use the API, whatever it sends.
    """
    host = _host_name(host_header)
    if is_loopback(bound) and not is_loopback(host):
        return (f"Host {host_header!r} is not this server's address (it listens on {bound}): requests through "
                f"another name are refused")
    if origin is not None:
        origin_authority = origin.split("://", 1)[-1].split("/", 1)[0]
        same = origin_authority.lower() == host_header.strip().lower() or (
            is_loopback(bound) and is_loopback(_host_name(origin_authority)))
        if not same:
            return f"Origin {origin!r} is not this server's page: requests from other sites are refused"
    return ""


def create_app(models: Dict[str, ServedModel], cfg, batcher: Batcher, token: Optional[str] = None,
               store=None) -> FastAPI:
    """The application over loaded ``models`` (the first is the default), with ``store`` for labelling."""
    default = next(iter(models))
    app = FastAPI(title="WarpCTC captcha reader",
                  description="Read captchas with MindSpore WarpCTC models; label a folder of them.")

    @app.exception_handler(RequestProblem)
    async def _problem(_, err: RequestProblem):
        return _error(err.status, err.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, err.detail)
        return _error(err.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.middleware("http")
    async def _same_origin(request: Request, call_next):
        # Checked before the token: a page on another site must not reach a loopback server that has
        # none (a text/plain POST needs no preflight), nor a foreign name that resolves to us (DNS
        # rebinding).
        problem = foreign_request(request.headers.get("host", ""), request.headers.get("origin"), cfg.host)
        if problem:
            return _error(403, problem)
        return await call_next(request)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if token is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                return _error(401, "missing or wrong token: send the header Authorization: Bearer <token>")
        return await call_next(request)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        if not os.path.isfile(PAGE):
            raise RequestProblem("the page is not installed (src/serve/web/index.html)", 404)
        return HTMLResponse(open(PAGE, encoding="utf-8").read())

    @app.api_route("/healthz", methods=["GET", "HEAD"], summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get("/models", summary="The loaded models")
    async def list_models():
        return {"default": default, "models": [model.info() for model in models.values()]}

    @app.get("/stats", summary="What the batcher has read",
             description="Forward passes by their number of images, images read, and the seconds spent in "
                         "forward passes since the server started.")
    async def stats():
        return batcher.stats()

    def pick(name: Optional[str]) -> ServedModel:
        if name is None:
            return models[default]
        if name not in models:
            raise RequestProblem(f"model={name!r} is not loaded; loaded: {', '.join(models)}", 404)
        return models[name]

    @app.post("/predict", summary="Read captchas",
              description='Multipart fields named "image" (repeatable), or JSON {"images": ["<base64>", ...]}. '
                          "Answers one result per image, in order.")
    async def predict(request: Request, model: Optional[str] = None):
        served = pick(model)
        announced = batcher.expect()
        try:
            body = await _read_body(request, cfg.max_bytes, "--max_bytes")
            images = await _request_images(request, body, cfg.max_images)

            def prepare():
                return [served.prepare(data, name, cfg.max_pixels) for name, data in images]
            try:
                arrays = await run_in_threadpool(prepare)
            except ImageProblem as err:
                raise RequestProblem(str(err), err.status) from None
            futures = batcher.submit(served, arrays, announced)
        finally:
            announced()
        results = await asyncio.gather(*(asyncio.wrap_future(future) for future in futures))
        return {"results": [{"text": text, "confidence": confidence, "model": served.name}
                            for text, confidence in results]}

    def labelling():
        if store is None:
            raise RequestProblem("not labelling: start serve.py with --label_dir FOLDER", 404)
        return store

    def item_problem(err: ValueError) -> RequestProblem:
        return RequestProblem(str(err), 404 if "not an image of" in str(err) else 400)

    def folder_state(call):
        # A labels.tsv edited by hand into one the store cannot read: the answer names its line.
        try:
            return call()
        except ValueError as err:
            raise RequestProblem(f"{err}; fix or move labels.tsv, then reload", 409) from None

    @app.get("/label/status", summary="Labelling progress")
    async def label_status():
        current = labelling()
        counts = folder_state(current.counts)
        return {**counts, "folder": current.folder, "missing": current.missing(), "read": current.reading_count(),
                "reading_done": current.readings_done()}

    @app.get("/label/next", summary="The next image to label (least confident first)")
    async def label_next():
        current = labelling()
        following = folder_state(current.next)
        return following if following is not None else {"file": None, "reading": None, "confidence": None,
                                                        **current.counts()}

    @app.get("/label/item/{file}", summary="One image's label state")
    async def label_item(file: str):
        try:
            return labelling().item(file)
        except ValueError as err:
            raise item_problem(err) from None

    @app.get("/label/image/{file}", summary="One image of the folder")
    async def label_image(file: str):
        try:
            data = await run_in_threadpool(labelling().image_bytes, file)
        except ValueError as err:
            raise item_problem(err) from None
        kind = IMAGE_FORMATS.get(os.path.splitext(file)[1].lower())
        return Response(data, media_type=kind[1] if kind else "application/octet-stream")

    @app.post("/label", summary="Save one label",
              description='{"file": "<name>", "label": "<text>"} or {"file": "<name>", "unreadable": true}')
    async def save_label(request: Request):
        current = labelling()
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            raise RequestProblem(f"Content-Type must be application/json, got {kind or 'none'!r}", 415)
        body = await _read_body(request, LABEL_BODY_LIMIT, "the label limit of")
        data = _parse_json(body)
        if not isinstance(data, dict) or not isinstance(data.get("file"), str):
            raise RequestProblem('the JSON body must be {"file": "<name>", "label": "<text>"} or '
                                 '{"file": "<name>", "unreadable": true}')
        unknown = set(data) - {"file", "label", "unreadable"}
        if unknown:
            raise RequestProblem(f"unknown field(s) {', '.join(sorted(unknown))}; expected file and label or "
                                 f"unreadable")
        unreadable = data.get("unreadable", False)
        label = data.get("label")
        if not isinstance(unreadable, bool) or (label is not None and not isinstance(label, str)):
            raise RequestProblem('"label" must be a string and "unreadable" true or false')
        if (label is None) == (not unreadable):
            raise RequestProblem('give exactly one of "label" and "unreadable": true')
        try:
            return await run_in_threadpool(current.save, data["file"], label, unreadable)
        except ValueError as err:
            raise item_problem(err) from None

    return app
