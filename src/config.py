"""The single source of truth for WarpCTC's parameters.

Defaults live in :class:`Config`. Every entry point (``train.py``, ``eval.py``, ...) builds
its parser with :func:`add_config_arguments`, so each field can be overridden on the
command line (``--batch_size 32``) or from a YAML file (``--config_path my.yaml``).
Precedence: defaults < YAML file < command line. What a captcha is (alphabet, length, size,
normalisation) is read from a config with ``CaptchaSpec.from_config(cfg)``
(``src/captcha_spec.py``), how rendered captchas look with ``RenderStyle.from_config(cfg)``
(``src/data/render.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from src.captcha_spec import DIGITS, MAX_CHARSET, NORMALIZATIONS, RESIZES, CaptchaSpec, character_pools
from src.models import architecture, architecture_fields, check_model, family_names, get_family, model_options
from src.data.render import RenderStyle

_STYLE = RenderStyle()       # the style fields' defaults: captcha's own drawing


@dataclass
class ModelSection:
    """What a model reads (the captcha spec's fields) and which network family reads it."""


    charset: str = field(default=DIGITS, metadata={"help": "the alphabet, case-sensitive: distinct characters, "
                                                           f"at most {MAX_CHARSET:,}; class count = its length + 1, "
                                                           "the CTC blank = its length"})
    max_captcha_digits: int = field(default=4, metadata={"help": "max number of characters in each captcha "
                                                                 "(labels have 1..N)"})
    captcha_width: int = field(default=160, metadata={"help": "width of captcha images (the network's CTC steps: this "
                                                              "width for warpctc, width / crnn_width_stride for crnn)"})
    captcha_height: int = field(default=64, metadata={"help": "height of captcha images"})
    normalization: str = field(default=NORMALIZATIONS[0], metadata={
        "help": "input normalisation: fixed (the original's dataset mean/std) or per_image (each channel of each "
                "image to mean 0, std 1); checkpoints record it, so eval, predict and export apply the same"})
    resize: str = field(default=RESIZES[0], metadata={
        "help": "how images of another size reach the network: stretch (to captcha_width x captcha_height, the "
                "original) or keep_aspect (scaled to fit with the aspect ratio kept, centred vertically, "
                "left-aligned, the rest filled with the border's mean colour); checkpoints record it"})
    ignore_case: bool = field(default=False, metadata={
        "help": "the captchas' case means nothing: texts are read, compared and written in lower case; a "
                "checkpoint records it, and eval, predict and serve may set it either way for any checkpoint"})
    read_charset: str = field(default="", metadata={
        "help": "read only these characters of the model's alphabet (e.g. 0123456789 for digit captchas read by "
                "crnn_universal.ckpt): the others are never output; empty: all. Like --ignore_case, eval, predict "
                "and serve may set it for any checkpoint"})
    read_classes: str = field(default="", metadata={
        "help": "read each text as one of these pools of characters, comma-separated '+'-joined classes (digits, "
                "lower, upper, all), e.g. digits,lower,upper,lower+digits,upper+digits,all: real captchas keep to one "
                "class, so a glyph's case or class is taken from its neighbours (docs/reading.md, Reading options); "
                "empty: off. Like --read_charset, eval, predict and serve may set it for any checkpoint"})
    network: str = field(default="warpctc", metadata={
        "help": "the network family: " + "; ".join(f"{f.name} ({f.summary})" for f in (get_family(n) for n in family_names()))})


# The model section: the spec's fields, then every registered family's options (src/models/), so that a
# family declares its options once and each is a config field, a --<name> option and a YAML key.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig", [(o.name, o.type, field(default=o.default, metadata={"help": o.help})) for o in model_options()],
    bases=(ModelSection,))


@dataclass
class DataConfig:
    """Where images come from and how they are batched: the folder's and the on-the-fly stream's options, the
    render style (``RenderStyle.from_config``) and the image-size limit every reader applies."""

    batch_size: int = field(default=64, metadata={"help": "batch size per device"})
    num_parallel_workers: int = field(default=0, metadata={"help": "dataset workers; 0 = auto (1 for CPU training, "
                                                                       "else the CPU count capped at 8)"})
    max_pixels: int = field(default=4_000_000, metadata={
        "help": "images of more pixels than this are refused from their header (decompression bombs), "
                "by every entry point that reads images"})
    synthetic_images: int = field(default=0, metadata={
        "help": "train on this many captchas per epoch rendered on the fly from the spec, the style options and "
                "the seed: alone, or with --dataset_path mixed into each epoch of the folder's images (0 = the "
                "folder only)"})
    label_classes: str = field(default="", metadata={
        "help": "on the fly, draw each label from one of these character pools of the alphabet: comma-separated "
                "'+'-joined classes of digits, lower, upper, all (e.g. digits,lower+digits,upper+digits,all); "
                "empty = every label from the whole alphabet"})
    augment_folder: bool = field(default=False, metadata={
        "help": "in training, also apply the style's whole-image augmentations (image_rotation, image_shear, "
                "image_wave, image_blur, color_jitter, image_noise, jpeg_quality) to the --dataset_path images, "
                "drawn anew each epoch"})
    fonts: str = field(default=",".join(_STYLE.fonts), metadata={
        "help": "comma-separated: captcha (the font the captcha package ships), system (the installed fonts "
                "that draw the whole alphabet), dejavu-sans, dejavu-sans-mono, dejavu-serif (the four DejaVu faces "
                "of each that the matplotlib package ships), font files or folders of them"})
    exclude_fonts: str = field(default=",".join(_STYLE.exclude_fonts), metadata={
        "help": "comma-separated file-name patterns (e.g. DejaVuSerif*) of fonts left out of --fonts"})
    text_layout: str = field(default=_STYLE.text_layout, metadata={
        "help": "captcha (the captcha package's drawing) or varied (glyph by glyph, each image its own width, "
                "background, fonts, inks and clutter; README 'Captchas on the fly')"})
    font_sizes: str = field(default=",".join(map(str, _STYLE.font_sizes)), metadata={
        "help": "comma-separated font sizes in pixels, one drawn per character; at most 2 x captcha_height"})
    text_colors: str = field(default="-".join(map(str, _STYLE.text_colors)), metadata={
        "help": "LOW-HIGH range of each RGB channel of the text colour"})
    background_colors: str = field(default="-".join(map(str, _STYLE.background_colors)), metadata={
        "help": "LOW-HIGH range of each RGB channel of the background colour"})
    noise_dots: int = field(default=_STYLE.noise_dots, metadata={"help": "noise dots per image (0 = none)"})
    noise_curves: int = field(default=_STYLE.noise_curves, metadata={"help": "noise arcs per image (0 = none)"})
    char_rotation: float = field(default=_STYLE.char_rotation, metadata={
        "help": "each character is rotated by up to +-this many degrees"})
    char_warp: float = field(default=_STYLE.char_warp, metadata={
        "help": "scale of the captcha package's per-character warp (0 = none)"})
    image_rotation: float = field(default=_STYLE.image_rotation, metadata={
        "help": "the whole image is rotated by up to +-this many degrees (0 = off)"})
    image_shear: float = field(default=_STYLE.image_shear, metadata={
        "help": "horizontal shear of the whole image, up to +-this factor (0 = off)"})
    image_wave: float = field(default=_STYLE.image_wave, metadata={
        "help": "pixel columns shifted up and down along a sine wave of up to this amplitude in pixels (0 = off)"})
    image_blur: float = field(default=_STYLE.image_blur, metadata={
        "help": "Gaussian blur of radius up to this many pixels (0 = off)"})
    color_jitter: float = field(default=_STYLE.color_jitter, metadata={
        "help": "brightness and contrast scaled by factors in [1 - this, 1 + this] (0 = off)"})
    background_texture: float = field(default=_STYLE.background_texture, metadata={
        "help": "this share of captchas get a gradient background with soft blotches instead of a flat one (0 = none)"})
    strike_lines: int = field(default=_STYLE.strike_lines, metadata={
        "help": "up to this many lines, straight or bent, 1-4 pixels wide, drawn across the text (0 = none)"})
    image_noise: float = field(default=_STYLE.image_noise, metadata={
        "help": "Gaussian pixel noise of standard deviation up to this share of 255 (0 = off)"})
    jpeg_quality: int = field(default=_STYLE.jpeg_quality, metadata={
        "help": "re-encode as JPEG of a quality drawn from this to 95 (5-95; 0 = off)"})
    image_scale: float = field(default=_STYLE.image_scale, metadata={
        "help": "shrink the image to a share of its size drawn from [1 - this, 1], as a low-resolution captcha "
                "(0 = off)"})


@dataclass
class TrainConfig:
    """The recipe: schedule, optimizer and checkpoints; names and defaults follow the original model zoo's
    table, the options beyond it default to the original's values."""

    epoch_size: int = field(default=30, metadata={"help": "training epochs (inference always uses 1)"})
    learning_rate: float = field(default=0.01, metadata={"help": "initial learning rate (x device count in data parallel)"})
    momentum: float = field(default=0.9, metadata={"help": "momentum of the SGD optimizer"})
    save_checkpoint: bool = field(default=True, metadata={"help": "whether to save checkpoints"})
    save_checkpoint_steps: int = field(default=97, metadata={"help": "steps between two checkpoints (the last step is always saved)"})
    keep_checkpoint_max: int = field(default=30, metadata={"help": "keep only the newest N checkpoints of this training"})
    save_checkpoint_path: str = field(default="./checkpoint", metadata={"help": "folder for checkpoints"})
    checkpoint_prefix: str = field(default="", metadata={
        "help": "checkpoints are saved as <prefix>-<epoch>_<step>.ckpt; default: the network's name (warpctc, crnn)"})
    seed: int = field(default=1, metadata={"help": "seed for weight init and dataset shuffle; process_data.py "
                                                   "and the on-the-fly stream (--synthetic_images) render from it "
                                                   "(the same seed gives the same labels and byte-identical "
                                                   "images)"})
    clip_global_norm: float = field(default=10.0, metadata={"help": "gradient clipping by global norm"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd (with momentum, the original) or adam"})
    lr_schedule: str = field(default="step", metadata={"help": "step (x0.1 before epochs 10/20/30, the original) "
                                                               "or cosine (decay to 0 over the run)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warm-up steps"})
    train_steps: int = field(default=0, metadata={"help": "stop after this many steps, mid-epoch if need be; the "
                                                          "schedule spans them (0 = epoch_size whole epochs)"})
    fresh_head: bool = field(default=False, metadata={
        "help": "with --init_checkpoint of another alphabet, draw every row of the dense head fresh, as the "
                "alphanumeric releases were trained, instead of carrying over the rows of the blank and of the "
                "characters both alphabets share"})


@dataclass
class ServeConfig:
    """Serving (serve.py, and predict.py's backend): the other entry points do not offer these options."""

    host: str = field(default="127.0.0.1", metadata={
        "help": "address serve.py listens on; anything but loopback needs --token"})
    port: int = field(default=8000, metadata={"help": "TCP port serve.py listens on"})
    backend: str = field(default="mindspore", metadata={
        "help": "inference of serve.py and predict.py: mindspore, or onnxruntime on the model exported to ONNX once "
                "and cached by the checkpoint's SHA-256 (predict.py then reads without importing MindSpore)"})
    max_batch: int = field(default=32, metadata={"help": "serve.py reads at most this many images in one forward pass"})
    max_wait_ms: float = field(default=20.0, metadata={
        "help": "serve.py waits at most this long for more images to join a batch"})
    max_images: int = field(default=64, metadata={"help": "serve.py accepts at most this many images per request"})
    max_bytes: int = field(default=8 * 1024 * 1024, metadata={"help": "serve.py refuses request bodies over this size (413)"})
    header_timeout: float = field(default=10.0, metadata={
        "help": "serve.py closes a connection whose request headers are not all in within this many seconds (408)"})
    max_connections: int = field(default=500, metadata={
        "help": "serve.py answers 503 and closes any connection beyond this many open at once"})
    onnx_cache: str = field(default="~/.cache/warpctc/onnx", metadata={
        "help": "--backend onnxruntime keeps its ONNX exports here, by checkpoint SHA-256 and batch size"})


@dataclass
class Config(TrainConfig, DataConfig, ModelConfig):
    """What train.py, eval.py, export.py, process_data.py and the benchmarks take: model, data and train."""


@dataclass
class ServingConfig(ServeConfig, DataConfig, ModelConfig):
    """What serve.py and predict.py take: model, data and serve (no training recipe)."""


OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("step", "cosine")
SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "serve": ServeConfig}
# Every YAML key and command-line option, whichever section holds it.
CONFIG_FIELDS = {f.name: f for section in SECTIONS.values() for f in dataclasses.fields(section)}
BACKENDS = ("mindspore", "onnxruntime")
# Offered by serve.py (and predict.py's backend) alone: add_config_arguments leaves them out unless asked for.
SERVE_FIELDS = tuple(f.name for f in dataclasses.fields(ServeConfig))


# What the reading entry points (eval, predict, export) use: the model's fields (a checkpoint's record
# decides them; given, they are checked against it), how texts are read, and how images are batched.
# Their --help offers these alone; a YAML with every key still serves them.
INFERENCE_FIELDS = (tuple(f.name for f in dataclasses.fields(ModelSection) if f.name != "network")
                    + architecture_fields() + ("batch_size", "num_parallel_workers", "max_pixels"))


def _str2bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _finite_float(text: str) -> float:
    """A float from the command line or a YAML string such as ``1e-3``; nan and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _field_type(f: dataclasses.Field) -> type:
    # With `from __future__ import annotations` a class body's annotation is a string; make_dataclass's a type.
    return f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}[f.type]


def add_config_arguments(parser: argparse.ArgumentParser,
                         names: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """Add ``--config_path`` and one ``--<name>`` option per :class:`Config` field but the serving ones (or per
    field of ``names``).

    A script that uses only some fields (``process_data.py``) offers only those options; its
    ``--config_path`` still accepts a file with every key, so one YAML serves every script.
    """
    offered = [name for name in CONFIG_FIELDS if name not in SERVE_FIELDS] if names is None else list(names)
    # Read back by explicit_overrides: a script's own option that shares a field's name (a
    # benchmark's --train_steps) must not become that field.
    parser.set_defaults(config_fields=offered)
    group = parser.add_argument_group("configuration (defaults from src/config.py)")
    group.add_argument("--config_path", default=None,
                       help="optional YAML file overriding the defaults; the command line overrides it")
    for f in (CONFIG_FIELDS[name] for name in offered):
        kind = _field_type(f)
        parse = {bool: _str2bool, float: _finite_float}.get(kind, kind)
        group.add_argument(f"--{f.name}", type=parse, default=None,
                           metavar=kind.__name__.upper(),
                           help=f"{f.metadata['help']} (default: {f.default})")
    return parser


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _field_type(CONFIG_FIELDS[name])
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return _str2bool(value)
            except argparse.ArgumentTypeError as err:
                raise ValueError(f"{source}: '{name}' {err}") from None
        raise ValueError(f"{source}: '{name}' must be true or false, got {value!r}")
    if kind is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        # PyYAML reads an exponent without a dot (1e-3) as a string; the command line takes it.
        try:
            return _finite_float(str(value))
        except argparse.ArgumentTypeError:
            raise ValueError(f"{source}: '{name}' must be a finite float, got {value!r}") from None
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)     # a quoted "64": what the command line accepts, nothing looser
    if kind is str and isinstance(value, str):
        return value
    if kind is str:
        # YAML turns unquoted 0123 into 83 and yes into True: the text is lost, so ask for quotes.
        raise ValueError(f"{source}: '{name}' must be a string, got {value!r}; quote it "
                         f"({name}: \"...\") so that YAML keeps it as text")
    raise ValueError(f"{source}: '{name}' must be {kind.__name__}, got {value!r}")


def _read_yaml(path: str) -> Any:
    """The YAML document of ``path``: ValueError naming the file (and the line where YAML marks
    one) when it cannot be read, is not UTF-8 or is not valid YAML, a key given twice included."""
    import yaml  # only needed when a YAML file is given

    class UniqueKeyLoader(yaml.SafeLoader):
        """PyYAML keeps the last of two equal keys silently; YAML says keys are unique."""

        def construct_mapping(self, node, deep=False):
            first_line = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue        # `<<: *defaults`: the mapping's own keys may override merged ones
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue        # refused by SafeLoader below, with its own message
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice, first on line {first_line[key]}",
                        key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise ValueError(f"config file {path}: cannot be read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path}: not UTF-8 text (byte {err.start})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ValueError(f"config file {path}{line}: invalid YAML ({err.problem or err.context})") from None
    except (yaml.YAMLError, ValueError) as err:     # PyYAML's dates raise ValueError (month 13)
        raise ValueError(f"config file {path}: invalid YAML ({str(err).splitlines()[0]})") from None


def load_yaml_overrides(path: str) -> dict:
    """Read a YAML mapping of config overrides; unknown keys and wrong types are errors."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path}: not found")
    data = _read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of name: value, got {type(data).__name__}")
    # YAML reads `1:` and `~:` as a number and None: shown with their type, never compared with names.
    unknown = sorted(key if isinstance(key, str) else f"{key!r} ({type(key).__name__})"
                     for key in data if key not in CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"config file {path}: unknown key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(CONFIG_FIELDS)}")
    return {name: _coerce(name, value, f"config file {path}") for name, value in data.items()}


def validate(cfg):
    """Reject values no run can use, naming the option; the checks are those of the sections ``cfg`` has.

    The captcha fields (alphabet, length, size, normalisation) are checked by building their
    :class:`CaptchaSpec`, the network's (and the CTC steps it needs) by its family in ``src/models/``, the
    style fields by building their :class:`RenderStyle`: each owns its rules.
    """
    # --read_charset and --read_classes are checked against the model's alphabet, which a checkpoint may set
    # later; here only the syntax of the classes.
    check_model(architecture(cfg), CaptchaSpec.from_config(dataclasses.replace(cfg, read_charset="", read_classes="")))
    character_pools(cfg.read_classes, cfg.charset, "--read_classes", allow_empty=True)
    RenderStyle.from_config(cfg)
    for name in ("batch_size", "max_pixels"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if cfg.num_parallel_workers < 0:
        raise ValueError(f"--num_parallel_workers must be >= 0, got {cfg.num_parallel_workers}")
    if cfg.synthetic_images < 0:
        raise ValueError(f"--synthetic_images must be >= 0, got {cfg.synthetic_images}")
    character_pools(cfg.label_classes, cfg.charset, "--label_classes")
    if isinstance(cfg, TrainConfig):
        _validate_train(cfg)
    if isinstance(cfg, ServeConfig):
        _validate_serve(cfg)
    return cfg


def _validate_train(cfg: TrainConfig) -> None:
    for name in ("epoch_size", "save_checkpoint_steps", "keep_checkpoint_max"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if cfg.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {cfg.learning_rate}")
    if not 0 <= cfg.momentum < 1:
        raise ValueError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.clip_global_norm <= 0:
        raise ValueError(f"--clip_global_norm must be positive, got {cfg.clip_global_norm}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    if cfg.train_steps < 0:
        raise ValueError(f"--train_steps must be >= 0, got {cfg.train_steps}")
    if cfg.warmup_steps < 0:
        raise ValueError(f"--warmup_steps must be >= 0, got {cfg.warmup_steps}")


def _validate_serve(cfg: ServeConfig) -> None:
    if cfg.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if not 0 < cfg.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {cfg.port}")
    for name in ("max_batch", "max_images", "max_bytes", "header_timeout", "max_connections"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if cfg.max_wait_ms < 0:
        raise ValueError(f"--max_wait_ms must be >= 0, got {cfg.max_wait_ms}")


def explicit_overrides(args: argparse.Namespace) -> dict:
    """The values set by the YAML file or the command line (the latter winning), without defaults."""
    values = {}
    if getattr(args, "config_path", None):
        values.update(load_yaml_overrides(args.config_path))
    for name in getattr(args, "config_fields", CONFIG_FIELDS):
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return values


def config_from_args(args: argparse.Namespace, kind: type = Config):
    """Build the effective config (a :class:`Config`, or ``kind``: :class:`ServingConfig` for serve.py and
    predict.py): defaults, then the YAML file, then the command line. A YAML file may hold every section's keys
    (one file serves every script); those of sections ``kind`` has not are not its business."""
    own = {f.name for f in dataclasses.fields(kind)}
    return validate(kind(**{name: value for name, value in explicit_overrides(args).items() if name in own}))


def num_workers(cfg: Config, platform: str = "CPU", training: bool = False) -> int:
    """Dataset worker count: the configured value, else a default for the job.

    Training on CPU defaults to 1 worker: the training step already keeps every core busy,
    and more pipeline threads preempt its kernel threads (measured: 7.3% of end-to-end
    throughput lost with 2 workers on 2 cores, 3.8% with 1; see bench/README.md).
    Otherwise the CPU count, capped at 8.
    """
    if cfg.num_parallel_workers > 0:
        return min(cfg.num_parallel_workers, os.cpu_count() or 1)
    if training and platform == "CPU":
        return 1
    return max(1, min(8, os.cpu_count() or 1))
