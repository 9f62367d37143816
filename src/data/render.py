"""The one captcha renderer: ``(label, per-image seed, style) -> image``.

``process_data.py`` (PNG files) and the on-the-fly training stream (``src/dataset.py``) both
call :meth:`Renderer.render`, so the same label and seed give the same pixels either way.
Images are drawn with the ``captcha`` package (``ImageCaptcha``); it takes every random
choice from Python's unseedable ``secrets`` module, so the renderer swaps in a stand-in that
draws from the calling thread's seeded generator. With the default :class:`RenderStyle`
an image is exactly what ``ImageCaptcha.generate_image`` draws (and what every earlier
release rendered); each style option changes that and is off by default.
"""
from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import io
import math
import os
import random
import secrets
import stat
import threading
from dataclasses import dataclass, fields
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from PIL.ImageFont import FreeTypeFont, truetype

from src.captcha_spec import CaptchaSpec
from src.data.render_varied import draw_varied

MIN_LENGTH = 1                 # labels have MIN_LENGTH..max_length characters, as the spec reads them
FONT_EXTENSIONS = (".ttf", ".otf", ".ttc")
# `fonts` names for font families a pip package ships (matplotlib, pinned in requirements.txt),
# so that a style needs no font from the system: name -> the files of its four faces in
# matplotlib's mpl-data/fonts/ttf (regular, bold, oblique or italic, bold oblique or bold italic).
PACKAGE_FONTS = {
    "dejavu-sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf"),
    "dejavu-sans-mono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
                         "DejaVuSansMono-BoldOblique.ttf"),
    "dejavu-serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
                     "DejaVuSerif-BoldItalic.ttf"),
}
# Where `fonts: system` looks (Linux, macOS, Windows), as fontconfig and the OSes install them.
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts",
                    "/Library/Fonts", "/System/Library/Fonts", "~/Library/Fonts", r"C:\Windows\Fonts")
# The least luminance difference between text and background: captcha's own worst case
# (background >= 238, text <= 200), so its default draws are never redrawn.
MIN_CONTRAST = 38
# Font sizes are at most this many times the image height (captcha's default 56 in 64 pixels is 0.875).
MAX_FONT_SCALE = 2
_CONTRAST_TRIES = 50
# A code point no font draws: what a font renders for a character it lacks (its .notdef glyph).
_NO_GLYPH = "\U0010FFFF"


class _ThreadSeededSecrets:
    """Stand-in for the ``secrets`` module that ``captcha`` draws from.

    While a thread renders (see :func:`_seeded`), its draws come from that thread's seeded
    ``random.Random``; any other use of ``captcha`` gets the real ``secrets``. Per thread, so
    dataset worker threads can render at the same time.
    """

    def __init__(self):
        self._local = threading.local()

    def _rng(self) -> Optional[random.Random]:
        return getattr(self._local, "rng", None)

    def randbelow(self, n: int) -> int:
        rng = self._rng()
        return rng.randrange(n) if rng is not None else secrets.randbelow(n)

    def randbits(self, k: int) -> int:
        rng = self._rng()
        return rng.getrandbits(k) if rng is not None else secrets.randbits(k)

    def choice(self, seq):
        rng = self._rng()
        return rng.choice(seq) if rng is not None else secrets.choice(seq)


_SECRETS = _ThreadSeededSecrets()


@contextlib.contextmanager
def _seeded(rng: random.Random) -> Iterator[None]:
    """Inside the block, ``captcha``'s draws in this thread come from ``rng``."""
    import captcha.image

    captcha.image.secrets = _SECRETS      # idempotent; falls back to the real secrets outside renders
    _SECRETS._local.rng = rng
    try:
        yield
    finally:
        _SECRETS._local.rng = None


def sample_label(rng: random.Random, spec: CaptchaSpec, pools: Sequence[str] = ()) -> str:
    """A label of MIN_LENGTH..max_length characters, length uniform, characters uniform from the alphabet
    or, with ``pools`` (``src.captcha_spec.character_pools``), from one pool drawn per label: real
    captchas mostly keep to one class (digits only, lower case only, ...), and a label that does lets a
    reader take a glyph's case or class from its neighbours."""
    length = rng.randint(MIN_LENGTH, spec.max_length)
    alphabet = pools[rng.randrange(len(pools))] if pools else spec.charset
    # One randrange per character: for the digits these are the draws every earlier release made,
    # so the same seed still gives the same labels and images.
    return "".join(alphabet[rng.randrange(len(alphabet))] for _ in range(length))


# -- style -----------------------------------------------------------------------------------------

def _parse_range(text: str, name: str) -> Tuple[int, int]:
    """``"10-200"`` (or ``"128"``) -> ``(10, 200)``: a range of 0-255 channel values."""
    parts = text.strip().split("-")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (None, None)
    except ValueError:
        low = high = None
    if low is None or not 0 <= low <= high <= 255:
        raise ValueError(f"--{name} must be LOW-HIGH with 0 <= LOW <= HIGH <= 255 (channel values), got {text!r}")
    return low, high


def _parse_sizes(text: str) -> Tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"--font_sizes must be comma-separated positive pixel sizes, e.g. 42,50,56, got {text!r}")
    return sizes


# The numeric style options (Config and RenderStyle share the names): their allowed [low, high].
_LIMITS = {"noise_dots": (0, 1000), "noise_curves": (0, 20), "char_rotation": (0, 180), "char_warp": (0, 5),
           "image_rotation": (0, 180), "image_shear": (0, 1), "image_wave": (0, 32), "image_blur": (0, 10),
           "color_jitter": (0, 0.9), "background_texture": (0, 1), "strike_lines": (0, 10), "image_noise": (0, 0.5),
           "jpeg_quality": (0, 95), "image_scale": (0, 0.8)}
# How the text is laid out: captcha's own drawing, or src/data/render_varied.py's (which also draws
# captcha's, at a varied width, for a share of the images).
TEXT_LAYOUTS = ("captcha", "varied")
VARIED_CAPTCHA_SHARE = 0.3


@dataclass(frozen=True)
class RenderStyle:
    """How captchas look beyond the spec. The defaults are ``captcha``'s own drawing.

    ``fonts``: ``captcha`` (the font the package ships), ``system`` (the TrueType/OpenType fonts
    installed on this machine that draw the whole alphabet), ``dejavu-sans``, ``dejavu-sans-mono``,
    ``dejavu-serif`` (:data:`PACKAGE_FONTS`: DejaVu faces from the matplotlib package), font files or
    folders of them. ``font_sizes`` are at most MAX_FONT_SCALE x the image height (see :func:`check_fits`).
    Colours are per-channel ranges; the text colour is redrawn (up to 50 times) until it differs
    from the background by at least MIN_CONTRAST grey levels. ``char_*`` scale ``captcha``'s per-character transforms;
    ``image_*`` and ``color_jitter`` are whole-image augmentations drawn from the same seed (0 = off).
    ``background_texture`` (the share of images whose flat background becomes a gradient with
    blotches) and ``strike_lines`` (up to this many lines of random colour and width across the text)
    change the drawing; ``image_noise`` (Gaussian pixel noise, sigma up to this share of 255),
    ``jpeg_quality`` (re-encoded as JPEG of quality from this to 95) and ``image_scale`` (shrunk to
    a share of its size drawn from [1 - this, 1], as a low-resolution captcha) are whole-image
    augmentations. ``text_layout`` ``varied`` draws each image glyph by glyph at its own width
    (:mod:`src.data.render_varied`); ``exclude_fonts`` are file-name patterns left out of ``fonts``.
    """

    fonts: Tuple[str, ...] = ("captcha",)
    exclude_fonts: Tuple[str, ...] = ()
    text_layout: str = "captcha"
    font_sizes: Tuple[int, ...] = (42, 50, 56)
    text_colors: Tuple[int, int] = (10, 200)
    background_colors: Tuple[int, int] = (238, 255)
    noise_dots: int = 30
    noise_curves: int = 1
    char_rotation: float = 30.0
    char_warp: float = 1.0
    image_rotation: float = 0.0
    image_shear: float = 0.0
    image_wave: float = 0.0
    image_blur: float = 0.0
    color_jitter: float = 0.0
    background_texture: float = 0.0
    strike_lines: int = 0
    image_noise: float = 0.0
    jpeg_quality: int = 0
    image_scale: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "RenderStyle":
        """The style of a :class:`src.config.Config`; ValueError naming the option for a bad value.

        Only the values are checked here; font files are opened by :class:`Renderer`.
        """
        fonts = tuple(part.strip() for part in cfg.fonts.split(",") if part.strip())
        if not fonts:
            raise ValueError(f"--fonts is empty: give captcha, system, {', '.join(PACKAGE_FONTS)}, or font "
                             "files/folders (comma-separated)")
        for name, (low, high) in _LIMITS.items():
            value = getattr(cfg, name)
            if not low <= value <= high:
                raise ValueError(f"--{name} must be in [{low}, {high}], got {value}")
        if cfg.text_layout not in TEXT_LAYOUTS:
            raise ValueError(f"--text_layout must be one of {', '.join(TEXT_LAYOUTS)}, got {cfg.text_layout!r}")
        excluded = tuple(part.strip() for part in cfg.exclude_fonts.split(",") if part.strip())
        style = cls(fonts=fonts, exclude_fonts=excluded, text_layout=cfg.text_layout, font_sizes=_parse_sizes(cfg.font_sizes),
                    text_colors=_parse_range(cfg.text_colors, "text_colors"),
                    background_colors=_parse_range(cfg.background_colors, "background_colors"),
                    **{name: getattr(cfg, name) for name in _LIMITS})
        (t_low, t_high), (b_low, b_high) = style.text_colors, style.background_colors
        if 0 < style.jpeg_quality < 5:
            raise ValueError(f"--jpeg_quality must be 0 (off) or a JPEG quality in [5, 95], got {style.jpeg_quality}")
        if max(b_high - t_low, t_high - b_low) < MIN_CONTRAST:
            raise ValueError(f"--text_colors {cfg.text_colors} and --background_colors {cfg.background_colors} "
                             f"leave no text {MIN_CONTRAST} grey levels away from its background")
        return style

    def changes(self) -> Dict[str, object]:
        """The options that differ from the default, by Config name (empty for today's captchas)."""
        default = RenderStyle()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def describe(self) -> str:
        """One line for logs: ``default style`` or ``style: fonts=system, image_blur=1.0``."""
        changed = self.changes()
        if not changed:
            return "default style"
        show = {k: ",".join(map(str, v)) if k in ("fonts", "exclude_fonts", "font_sizes") else
                "-".join(map(str, v)) if isinstance(v, tuple) else v for k, v in changed.items()}
        return "style: " + ", ".join(f"{k}={v}" for k, v in show.items())


AUGMENTATION_FIELDS = ("image_rotation", "image_shear", "image_wave", "image_blur", "color_jitter", "image_noise",
                       "jpeg_quality", "image_scale")
"""The style's whole-image augmentations (:meth:`Renderer.augment`), which also apply to labelled images."""

STYLE_FIELDS = ("fonts", "exclude_fonts", "text_layout", "font_sizes", "text_colors", "background_colors") + tuple(_LIMITS)
"""The Config fields of the style, in the order of RenderStyle."""


def check_fits(style: RenderStyle, spec: CaptchaSpec) -> None:
    """ValueError naming the option unless ``style`` can draw captchas of ``spec``'s size.

    ``captcha`` draws each character at its font size, then scales the line into the image; a
    size far beyond the height only makes FreeType fail ("invalid pixel size") or allocate huge
    glyph images, so sizes are bounded by MAX_FONT_SCALE x the height.
    """
    limit = MAX_FONT_SCALE * spec.height
    if max(style.font_sizes) > limit:
        raise ValueError(f"--font_sizes {','.join(map(str, style.font_sizes))}: {max(style.font_sizes)} pixels is "
                         f"more than {MAX_FONT_SCALE} x --captcha_height {spec.height} = {limit}, the largest "
                         f"size drawn into an image that high")


# -- fonts -----------------------------------------------------------------------------------------

def system_font_files() -> List[str]:
    """Every font file under the usual system font folders, sorted (the order fixes the draws).

    Only regular files count: a FIFO named like a font would block the first read forever.
    """
    found = []
    for folder in SYSTEM_FONT_DIRS:
        found += _font_files_in(os.path.expanduser(folder), strict=False)
    return sorted(set(found))


def package_font_files(family: str) -> List[str]:
    """The four faces of a :data:`PACKAGE_FONTS` family, as the matplotlib package installed them.

    ValueError (starting with ``family``) when matplotlib or one of the files is missing.
    """
    # find_spec locates the package without importing it: matplotlib's import would set up its
    # config and cache folders, and only its font files are wanted.
    found = importlib.util.find_spec("matplotlib")
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"{family}: these fonts come from the matplotlib package, which is not installed "
                         f"(pip install -r requirements.txt)")
    folder = os.path.join(found.submodule_search_locations[0], "mpl-data", "fonts", "ttf")
    paths = [os.path.join(folder, name) for name in PACKAGE_FONTS[family]]
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"{family}: {path} is missing from the matplotlib package "
                             f"(reinstall it: pip install -r requirements.txt)")
    return paths


def _not_a_regular_file(path: str) -> Optional[str]:
    """What ``path`` is when it is not a regular file (links followed), e.g. ``a FIFO``; None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.lexists(path) else "missing"
    except OSError as err:
        return f"a path that cannot be read ({err.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "a device or other special file")


def _font_files_in(folder: str, strict: bool = True) -> List[str]:
    """The font files (by extension) in ``folder`` and below, sorted. An entry named like a font that is
    not a regular file, or a subfolder that cannot be read, is a ValueError naming it when ``strict``,
    else skipped (a system folder is not the user's to fix)."""
    def unreadable(err: OSError) -> None:
        if strict:
            raise ValueError(f"--fonts {err.filename}: cannot read the folder ({err.strerror})")

    found = []
    for root, folders, names in os.walk(folder, onerror=unreadable):
        for name in sorted(folders + names):
            if os.path.splitext(name)[1].lower() not in FONT_EXTENSIONS:
                continue
            path = os.path.join(root, name)
            kind = _not_a_regular_file(path)
            if kind is None:
                found.append(path)
            elif strict:
                raise ValueError(f"--fonts {path}: is {kind}, not a font file")
    return sorted(found)


def _glyph(font: FreeTypeFont, char: str) -> Image.Image:
    canvas = Image.new("L", (2 * font.size, 2 * font.size))
    ImageDraw.Draw(canvas).text((font.size // 2, 0), char, font=font, fill=255)
    return canvas


def undrawable_characters(charset: str, fonts: Sequence[FreeTypeFont]) -> List[str]:
    """The characters of ``charset`` that one of ``fonts`` draws as nothing or as its missing-glyph box."""
    missing = []
    for font in fonts:
        no_glyph = _glyph(font, _NO_GLYPH).tobytes()
        for char in charset:
            glyph = _glyph(font, char)
            if char not in missing and (glyph.getbbox() is None or glyph.tobytes() == no_glyph):
                missing.append(char)
    return missing


def resolve_fonts(style: RenderStyle, charset: str) -> Tuple[List[str], str]:
    """``(font files, description)`` of ``style.fonts``; ValueError naming a font that cannot serve.

    ``captcha`` is the package's own font; ``system`` the installed fonts that draw every
    character of ``charset`` (the others are left out, and the description says how many); a
    :data:`PACKAGE_FONTS` name that family's faces from the matplotlib package; any other entry is
    a font file or a folder of them. Those last two must load and draw the whole alphabet. Only
    regular files are opened.
    """
    from captcha.image import DEFAULT_FONTS

    files, notes = [], []
    for entry in style.fonts:
        if entry == "captcha":
            fonts = [truetype(name, size) for name in DEFAULT_FONTS for size in style.font_sizes]
            missing = undrawable_characters(charset, fonts)
            if missing:
                raise ValueError(f"--charset {charset!r}: the captcha package's fonts cannot draw "
                                 f"{''.join(missing)!r}")
            files += DEFAULT_FONTS
            continue
        if entry == "system":
            # Excluded files are dropped before the alphabet check, which opens every candidate.
            installed = system_font_files()
            candidates = [path for path in installed if not _excluded(path, style.exclude_fonts)]
            usable = [path for path in candidates if _draws(path, charset, style.font_sizes[0])]
            if not candidates:
                raise ValueError(f"--fonts system: no font files in {', '.join(SYSTEM_FONT_DIRS)}")
            if not usable:
                raise ValueError(f"--fonts system: none of the {len(candidates)} installed fonts draws every "
                                 f"character of {charset!r}")
            notes.append(f"system: {len(usable)} of {len(candidates)} fonts (the others lack characters of the "
                         "alphabet)" if len(usable) < len(candidates) else f"system: {len(usable)} fonts")
            if len(candidates) < len(installed):
                notes.append(f"{len(installed) - len(candidates)} installed fonts excluded by --exclude_fonts")
            files += usable
            continue
        if entry in PACKAGE_FONTS:
            try:
                listed = package_font_files(entry)
            except ValueError as err:
                raise ValueError(f"--fonts {err}") from None
        else:
            path = os.path.expanduser(entry)
            kind = _not_a_regular_file(path)
            if kind == "missing":
                raise ValueError(f"--fonts {entry}: no such font file or folder")
            if kind == "a folder":
                listed = _font_files_in(path)
                if not listed:
                    raise ValueError(f"--fonts {entry}: folder holds no {'/'.join(FONT_EXTENSIONS)} files")
            elif kind is not None:
                raise ValueError(f"--fonts {entry}: is {kind}, not a font file")
            else:
                listed = [path]
        for font_file in listed:
            try:
                font = truetype(font_file, style.font_sizes[0])
            except OSError as err:
                raise ValueError(f"--fonts {font_file}: not a readable font ({err})") from None
            missing = undrawable_characters(charset, [font])
            if missing:
                raise ValueError(f"--fonts {font_file}: cannot draw {''.join(missing)!r} of --charset {charset!r}")
        files += listed
        notes.append(f"{entry}: {len(listed)} font(s)")
    files = list(dict.fromkeys(files))
    if style.exclude_fonts:
        kept = [path for path in files if not _excluded(path, style.exclude_fonts)]
        if not kept:
            raise ValueError(f"--exclude_fonts {','.join(style.exclude_fonts)}: leaves none of the "
                             f"{len(files)} fonts of --fonts")
        notes.append(f"{len(files) - len(kept)} excluded by --exclude_fonts")
        files = kept
    return files, "; ".join(notes)


def _excluded(path: str, patterns: Sequence[str]) -> bool:
    """Whether the file name of ``path`` matches one of the ``fnmatch`` patterns (case-insensitively)."""
    name = os.path.basename(path).lower()
    return any(fnmatch.fnmatch(name, pattern.lower()) for pattern in patterns)


def _draws(path: str, charset: str, size: int) -> bool:
    try:
        return not undrawable_characters(charset, [truetype(path, size)])
    except OSError:
        return False


# -- rendering -------------------------------------------------------------------------------------

def _luminance(color: Sequence[int]) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


class Renderer:
    """Draws captchas of one spec and style; any thread may call :meth:`render`. Picklable (the
    fonts are loaded again where it is unpickled).

    Building one checks the style against the spec (:func:`check_fits`), opens the fonts and checks
    that they draw the whole alphabet (ValueError otherwise), so a bad style fails before the first
    image.
    """

    def __init__(self, spec: CaptchaSpec, style: RenderStyle = RenderStyle()):
        check_fits(style, spec)
        self.spec = spec
        self.style = style
        self.font_files, _ = resolve_fonts(style, spec.charset)
        self._generators: dict = {}
        self._fonts: dict = {}

    def __getstate__(self):
        return {name: value for name, value in self.__dict__.items() if name not in ("_generators", "_fonts")}

    def __setstate__(self, state):
        self.__dict__.update(state, _generators={}, _fonts={})

    def _font(self, index: int, size: int) -> FreeTypeFont:
        """Font file ``index`` at ``size`` pixels, opened once per thread (FreeType faces are not shared)."""
        key = (threading.get_ident(), index, size)
        font = self._fonts.get(key)
        if font is None:
            font = self._fonts[key] = truetype(self.font_files[index], size)
        return font

    @property
    def generator(self):
        """The ``ImageCaptcha`` of this spec and style, built on first use in each thread (FreeType
        font objects are not to be shared by threads drawing at the same time).

        Kept by OS thread id, not in a ``threading.local``: MindSpore's pipeline threads call in
        with a new Python thread state each time, which would rebuild the fonts for every captcha.
        """
        ident = threading.get_ident()
        generator = self._generators.get(ident)
        if generator is None:
            from captcha.image import ImageCaptcha

            generator = ImageCaptcha(width=self.spec.width, height=self.spec.height, fonts=self.font_files,
                                     font_sizes=self.style.font_sizes)
            default = RenderStyle()
            # Instance attributes shadow captcha's class defaults only when changed, so that the
            # default draws stay bit for bit what captcha computes.
            if self.style.char_rotation != default.char_rotation:
                generator.character_rotate = (-self.style.char_rotation, self.style.char_rotation)
            if self.style.char_warp != default.char_warp:
                scale = self.style.char_warp
                generator.character_warp_dx = tuple(v * scale for v in generator.character_warp_dx)
                generator.character_warp_dy = tuple(v * scale for v in generator.character_warp_dy)
            self._generators[ident] = generator
        return generator

    def render(self, label: str, image_seed: str) -> Image.Image:
        """The RGB captcha of ``label``, every random choice drawn from ``random.Random(image_seed)``."""
        from captcha.image import random_color

        style, generator = self.style, self.generator
        rng = random.Random(image_seed)
        if style.text_layout == "varied":
            if rng.random() >= VARIED_CAPTCHA_SHARE:
                image, background, ink = draw_varied(
                    label, rng, self.spec.height, self._font, len(self.font_files), style.font_sizes,
                    style.text_colors, style.background_colors, style.char_rotation, style.noise_dots,
                    style.noise_curves)
                if style.strike_lines:
                    _strike_lines(image, ink, rng, rng.randint(0, style.strike_lines))
                return self.augment(image, rng, background)
            # captcha's drawing at a width of this label's own: 0.6 to 1.1 heights per character.
            generator._width = int(self.spec.height * max(1.6, len(label) * rng.uniform(0.6, 1.1) + 0.4))
            # One font size per image: captcha centres each glyph on its own ink, so only the size tells
            # an x from an X, and mixed sizes would hide it.
            every_size = generator.__dict__.setdefault("_all_truefonts", list(generator.truefonts))
            sizes = len(style.font_sizes)
            generator._truefonts = every_size[rng.randrange(sizes)::sizes]
        with _seeded(rng):
            # ImageCaptcha.generate_image, step by step, with the style's amounts.
            background = random_color(*style.background_colors)
            color = random_color(*style.text_colors, _SECRETS.randbelow(36) + 220)
            for _ in range(_CONTRAST_TRIES):
                if abs(_luminance(color) - _luminance(background)) >= MIN_CONTRAST:
                    break
                color = random_color(*style.text_colors, _SECRETS.randbelow(36) + 220)
            image = generator.create_captcha_image(label, color, background)
            generator.create_noise_dots(image, color, number=style.noise_dots)
            for _ in range(style.noise_curves):
                generator.create_noise_curve(image, color)
        # Drawn from rng only when on, so that the default draws stay what captcha computes.
        if style.background_texture and rng.random() < style.background_texture:
            image = _texture_background(image, color, background, rng, style)
        if style.strike_lines:
            _strike_lines(image, color, rng, rng.randint(1, style.strike_lines))
        image = image.filter(ImageFilter.SMOOTH)
        return self.augment(image, rng, background)

    def augment(self, image: Image.Image, rng: random.Random, background: Sequence[int]) -> Image.Image:
        """The style's whole-image augmentations of an RGB image (rendered here, or a labelled one), each
        drawing from ``rng`` only when on (defaults draw nothing); uncovered corners take ``background``."""
        style = self.style
        fill = tuple(background[:3])
        if style.image_rotation:
            image = image.rotate(rng.uniform(-style.image_rotation, style.image_rotation),
                                 resample=Image.Resampling.BILINEAR, fillcolor=fill)
        if style.image_shear:
            shear = rng.uniform(-style.image_shear, style.image_shear)
            image = image.transform(image.size, Image.Transform.AFFINE,
                                    (1, shear, -shear * image.height / 2, 0, 1, 0),
                                    resample=Image.Resampling.BILINEAR, fillcolor=fill)
        if style.image_wave:
            image = _wave(image, rng.uniform(style.image_wave / 2, style.image_wave),
                          rng.uniform(image.width / 4, image.width), rng.uniform(0, 2 * math.pi), fill)
        if style.image_blur:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, style.image_blur)))
        if style.color_jitter:
            jitter = style.color_jitter
            image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - jitter, 1 + jitter))
            image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - jitter, 1 + jitter))
        if style.image_noise:
            sigma = rng.uniform(0, style.image_noise) * 255
            noise = np.random.default_rng(rng.getrandbits(64)).normal(0, sigma, (image.height, image.width, 1))
            image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
        if style.image_scale:
            share = rng.uniform(1 - style.image_scale, 1)
            image = image.resize((max(1, round(image.width * share)), max(1, round(image.height * share))),
                                 Image.Resampling.BILINEAR if rng.random() < 0.5 else Image.Resampling.NEAREST)
        if style.jpeg_quality:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=rng.randint(style.jpeg_quality, 95))
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        return image

    def render_bgr(self, label: str, image_seed: str) -> np.ndarray:
        """:meth:`render` as the dataset reads an image: uint8 HWC in BGR order."""
        return np.ascontiguousarray(np.asarray(self.render(label, image_seed))[:, :, ::-1])


def _texture_background(image: Image.Image, color: Sequence[int], background: Sequence[int], rng: random.Random,
                        style: RenderStyle) -> Image.Image:
    """``image`` drawn in ``color`` on flat ``background``, redrawn on a linear gradient between two
    background colours with soft blotches: each pixel keeps its share of ink, estimated from its
    distance to the flat background along the ink colour."""
    pixels = np.asarray(image, np.float32)
    height, width = pixels.shape[:2]
    ink, flat = np.asarray(color[:3], np.float32), np.asarray(background[:3], np.float32)
    span = ink - flat
    share = np.clip(((pixels - flat) @ span) / max(float(span @ span), 1.0), 0, 1)[..., None]
    low, high = style.background_colors
    ends = [np.asarray([rng.randint(low, high) for _ in range(3)], np.float32) for _ in range(2)]
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xs / width - 0.5) * math.cos(angle) + (ys / height - 0.5) * math.sin(angle)
    ramp = ((ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6))[..., None]
    texture = ends[0] * (1 - ramp) + ends[1] * ramp
    for _ in range(rng.randint(0, 6)):
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(4, height / 2)
        tint = np.asarray([rng.randint(low, high) for _ in range(3)], np.float32)
        weight = 0.6 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius ** 2))[..., None]
        texture = texture * (1 - weight) + tint * weight
    # Keep the ink readable: push the texture away from the ink where they come too close.
    gap = (texture @ np.asarray([0.299, 0.587, 0.114], np.float32)) - _luminance(ink)
    need = np.where(np.abs(gap) < MIN_CONTRAST, (MIN_CONTRAST - np.abs(gap)) * np.where(gap >= 0, 1, -1), 0)
    texture = np.clip(texture + need[..., None], 0, 255)
    out = share * ink + (1 - share) * texture
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _strike_lines(image: Image.Image, color: Sequence[int], rng: random.Random, count: int) -> None:
    """Draw ``count`` lines across ``image``, straight or bent, 1-4 pixels wide, in the ink colour or another."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(count):
        ink = tuple(color[:3]) if rng.random() < 0.5 else tuple(rng.randint(0, 255) for _ in range(3))
        y0, y1 = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * height
        bend, phase = rng.uniform(0, height / 6), rng.uniform(0, 2 * math.pi)
        xs = np.linspace(rng.uniform(-0.1, 0.3) * width, rng.uniform(0.7, 1.1) * width, 24)
        ys = y0 + (y1 - y0) * (xs - xs[0]) / (xs[-1] - xs[0]) + bend * np.sin(2 * np.pi * xs / width + phase)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=ink, width=rng.randint(1, 4), joint="curve")


def _wave(image: Image.Image, amplitude: float, period: float, phase: float, fill: Tuple[int, ...]) -> Image.Image:
    """Shift each pixel column vertically by ``amplitude * sin(2 pi x / period + phase)`` pixels."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    shift = np.rint(amplitude * np.sin(2 * np.pi * np.arange(width) / period + phase)).astype(int)
    rows = np.arange(height)[:, None] - shift[None, :]
    inside = (rows >= 0) & (rows < height)
    out = pixels[np.clip(rows, 0, height - 1), np.arange(width)[None, :]]
    out[~inside] = fill
    return Image.fromarray(out)
