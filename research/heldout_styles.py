"""Captcha styles kept out of training, drawn by this script's own PIL code (not ``captcha``, not
``src/data/render.py``), to measure how a model does on captchas it was not made for.

A style here is not a mix of the generator's options: it differs in how text is drawn and
spoiled, so a model that reads it has generalised rather than memorised a covered style.

- ``ink``: DejaVu Serif glyphs (regular, bold, italic, bold italic: the ``dejavu-serif`` faces
  that the matplotlib package ships; the robust base trains on sans fonts only), each rotated
  and overlapping its neighbour, dark ink on a cream paper background with fibres, a thick
  wavy stroke through the text, then smoothed.
- ``stamp``: Pillow's built-in font at varying sizes, each character its own colour, on a
  two-colour gradient with a hatch of thin lines behind and in front of the text, a
  perspective squeeze, salt-and-pepper noise, saved as low-quality JPEG.
- ``outline``: hollow glyphs (only their outline, 1-2 pixels wide) of Computer Modern Sans and
  Typewriter (the TeX faces matplotlib ships, which no configuration trains on), each its own
  size, spaced from overlapping by a quarter glyph to a third of one apart, drawn at 4x the size
  and shrunk by dropping pixels (jagged, broken strokes), on a tilted checkerboard of two close
  colours under smooth grain, the whole image then bent by an elastic mesh warp.

Each split is a folder of ``<name>.png|jpg`` images plus ``labels.tsv`` (the dataset format
of README "Your own captchas"), a pure function of (style, seed, split, count)::

    python research/heldout_styles.py --output_dir heldout --style ink --splits adapt5000,test1000

``adaptN`` and ``testN`` are drawn from different seeds, so a test split is never seen by an
adaptation run. The alphabet, length and size come from the config (``--config_path``,
``--charset``, ...). ``--seed_text`` gives one split's seed as the text itself instead of
``<seed>-<split>``: it redraws a set pinned by that text (the tests' sets are drawn so)::

    python research/heldout_styles.py --output_dir /tmp/pinned --style ink --splits test300 --seed_text test-20261126
"""
from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402
from src.config import add_config_arguments, config_from_args  # noqa: E402
from src.data.render import package_font_files, sample_label, undrawable_characters  # noqa: E402

SPLIT_RE = re.compile(r"^(?P<name>[a-z]+)(?P<count>\d+)$")


def _serif_fonts() -> List[str]:
    try:
        return package_font_files("dejavu-serif")
    except ValueError as err:
        raise ValueError(f"style ink: {err}") from None


def _glyph(char: str, font: ImageFont.FreeTypeFont, color: Tuple[int, ...], angle: float) -> Image.Image:
    """One character as an RGBA tile, rotated by ``angle`` degrees with the tile grown to fit."""
    left, top, right, bottom = font.getbbox(char)
    tile = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((2 - left, 2 - top), char, font=font, fill=color)
    return tile.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def _paste_line(image: Image.Image, tiles: List[Image.Image], rng: random.Random, overlap: float) -> None:
    """Paste the tiles left to right, centred, each overlapping the previous by up to ``overlap`` of its width."""
    gaps = [-int(rng.uniform(0, overlap) * t.width) for t in tiles[1:]]
    total = sum(t.width for t in tiles) + sum(gaps)
    scale = min(1.0, (image.width - 8) / max(total, 1), (image.height - 4) / max(t.height for t in tiles))
    if scale < 1.0:
        tiles = [t.resize((max(1, int(t.width * scale)), max(1, int(t.height * scale))), Image.Resampling.BICUBIC)
                 for t in tiles]
        gaps = [int(g * scale) for g in gaps]
        total = sum(t.width for t in tiles) + sum(gaps)
    x = (image.width - total) // 2
    for i, tile in enumerate(tiles):
        y = (image.height - tile.height) // 2 + rng.randint(-4, 4)
        y = min(max(y, 0), image.height - tile.height)
        image.alpha_composite(tile, (max(x, 0), y))
        x += tile.width + (gaps[i] if i < len(gaps) else 0)


def draw_ink(label: str, rng: random.Random, width: int, height: int) -> Image.Image:
    """The ``ink`` style (see the module docstring)."""
    fonts = [ImageFont.truetype(path, size) for path in _serif_fonts() for size in (34, 40, 46)]
    paper = (rng.randint(235, 250), rng.randint(225, 240), rng.randint(190, 215))
    image = Image.new("RGBA", (width, height), paper + (255,))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(8, 16)):       # paper fibres
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        angle, length = rng.uniform(0, math.pi), rng.uniform(5, 20)
        shade = tuple(max(0, c - rng.randint(15, 40)) for c in paper)
        draw.line([(x, y), (x + length * math.cos(angle), y + length * math.sin(angle))], fill=shade, width=1)
    ink = (rng.randint(10, 70), rng.randint(10, 50), rng.randint(40, 110), 255)
    tiles = [_glyph(c, rng.choice(fonts), ink, rng.uniform(-25, 25)) for c in label]
    _paste_line(image, tiles, rng, overlap=0.2)
    # A wavy stroke through the text, as thick as a glyph's stems.
    amplitude, period, phase = rng.uniform(3, 9), rng.uniform(40, 120), rng.uniform(0, 2 * math.pi)
    base, tilt = rng.uniform(0.35, 0.65) * height, rng.uniform(-0.15, 0.15)
    points = [(x, base + tilt * (x - width / 2) + amplitude * math.sin(2 * math.pi * x / period + phase))
              for x in range(rng.randint(0, 20), width - rng.randint(0, 20), 2)]
    draw.line(points, fill=ink, width=rng.randint(2, 4))
    image = image.convert("RGB").filter(ImageFilter.SMOOTH_MORE)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))


def draw_stamp(label: str, rng: random.Random, width: int, height: int) -> Image.Image:
    """The ``stamp`` style (see the module docstring)."""
    top = np.array([rng.randint(150, 255) for _ in range(3)], dtype=np.float64)
    bottom = np.array([rng.randint(150, 255) for _ in range(3)], dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]
    pixels = top * (1 - ramp) + bottom * ramp
    image = Image.fromarray(np.repeat(pixels, height, axis=0).astype(np.uint8), "RGB").convert("RGBA")
    draw = ImageDraw.Draw(image)

    def hatch(count: int) -> None:
        for _ in range(count):
            shade = tuple(rng.randint(60, 200) for _ in range(3))
            x0, x1 = rng.uniform(-20, width), rng.uniform(0, width + 20)
            draw.line([(x0, 0), (x1, height)] if rng.random() < 0.5 else [(0, rng.uniform(0, height)),
                                                                          (width, rng.uniform(0, height))],
                      fill=shade, width=1)

    hatch(rng.randint(6, 12))
    tiles = []
    for char in label:
        color = (rng.randint(0, 120), rng.randint(0, 120), rng.randint(0, 120), 255)
        tiles.append(_glyph(char, ImageFont.load_default(rng.choice((36, 42, 48))), color, rng.uniform(-12, 12)))
    _paste_line(image, tiles, rng, overlap=0.05)
    draw = ImageDraw.Draw(image)
    hatch(rng.randint(2, 4))
    image = image.convert("RGB")
    # A perspective squeeze: one side narrower than the other.
    squeeze = rng.uniform(0, 0.2) * height
    left = rng.random() < 0.5
    quad = ((0, -squeeze if left else 0), (0, height + (squeeze if left else 0)),
            (width, height + (0 if left else squeeze)), (width, 0 if left else -squeeze))
    image = image.transform((width, height), Image.Transform.QUAD, [v for point in quad for v in point],
                            resample=Image.Resampling.BILINEAR, fillcolor=tuple(int(v) for v in top))
    pixels = np.asarray(image).copy()
    noise = np.random.default_rng(rng.getrandbits(32)).random((height, width))
    pixels[noise < 0.02] = 0
    pixels[noise > 0.98] = 255
    return Image.fromarray(pixels)


# Computer Modern Sans and Typewriter: the TeX faces matplotlib ships, which no configuration trains on.
OUTLINE_FONTS = ("cmss10.ttf", "cmtt10.ttf")
# The outline style draws at this many times the captcha's size, then shrinks without smoothing.
OUTLINE_SCALE = 4


def _outline_fonts() -> List[str]:
    try:
        folder = os.path.dirname(package_font_files("dejavu-sans")[0])      # matplotlib's font folder
    except ValueError as err:
        raise ValueError(f"style outline: {err}") from None
    paths = [os.path.join(folder, name) for name in OUTLINE_FONTS]
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"style outline: {path} is missing from the matplotlib package "
                             "(reinstall it: pip install -r requirements.txt)")
    return paths


def _check_alphabet(style: str, spec: CaptchaSpec) -> None:
    """ValueError naming the characters of the spec's alphabet that ``style``'s own fonts cannot draw."""
    if style != "outline":
        return
    fonts = [ImageFont.truetype(path, 40) for path in _outline_fonts()]
    missing = undrawable_characters(spec.charset, fonts)
    if missing:
        raise ValueError(f"--charset: style outline's fonts ({', '.join(OUTLINE_FONTS)}) do not draw "
                         f"{''.join(missing)!r}")


def _hollow_glyph(char: str, font: ImageFont.FreeTypeFont, color: Tuple[int, ...], stroke: int) -> Image.Image:
    """One character as an RGBA tile: only its outline, ``stroke`` pixels wide, its inside transparent."""
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    tile = Image.new("RGBA", (right - left + 2, bottom - top + 2), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    draw.text((1 - left, 1 - top), char, font=font, fill=color, stroke_width=stroke, stroke_fill=color)
    # Drawing the bare glyph again with a transparent ink clears its inside (Draw writes, not blends).
    draw.text((1 - left, 1 - top), char, font=font, fill=(0, 0, 0, 0))
    return tile


def _mesh_warp(image: Image.Image, rng: random.Random, amplitude: float, fill: Tuple[int, ...]) -> Image.Image:
    """An elastic warp: a grid of cells whose corners move along smooth random waves, each cell
    mapped from its moved quadrilateral."""
    width, height = image.size
    columns, rows = 10, 4
    waves = [(rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), rng.uniform(0, 2 * math.pi)) for _ in range(4)]

    def moved(x: float, y: float) -> Tuple[float, float]:
        u, v = x / width * 2 * math.pi, y / height * 2 * math.pi
        dx = sum(math.sin(fu * u + fv * v + phase) for fu, fv, phase in waves[:2]) / 2
        dy = sum(math.sin(fu * u + fv * v + phase) for fu, fv, phase in waves[2:]) / 2
        return x + amplitude * dx, y + amplitude * dy

    mesh = []
    for row in range(rows):
        for column in range(columns):
            x0, x1 = width * column // columns, width * (column + 1) // columns
            y0, y1 = height * row // rows, height * (row + 1) // rows
            corners = (moved(x0, y0), moved(x0, y1), moved(x1, y1), moved(x1, y0))   # NW, SW, SE, NE
            mesh.append(((x0, y0, x1, y1), [v for corner in corners for v in corner]))
    return image.transform(image.size, Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR,
                           fillcolor=fill)


def draw_outline(label: str, rng: random.Random, width: int, height: int) -> Image.Image:
    """The ``outline`` style (see the module docstring)."""
    scale = OUTLINE_SCALE
    big_w, big_h = width * scale, height * scale
    # A checkerboard of two close colours, its cells tilted, under smooth photo-like grain.
    light = np.array([rng.randint(170, 245) for _ in range(3)], dtype=np.float64)
    other = np.clip(light + [rng.randint(-45, 45) for _ in range(3)], 120, 255)
    cell, tilt = rng.uniform(5, 12), rng.uniform(-0.6, 0.6)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    checks = ((np.floor((xs + tilt * ys) / cell) + np.floor((ys - tilt * xs) / cell)) % 2)[:, :, None]
    pixels = light * (1 - checks) + other * checks
    grain = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(6, 16), (height // 4 + 1, width // 4 + 1))
    grain = np.asarray(Image.fromarray(grain.astype(np.float32), "F").resize((width, height), Image.Resampling.BICUBIC))
    pixels = np.clip(pixels + grain[:, :, None], 0, 255).astype(np.uint8)
    background = Image.fromarray(pixels, "RGB")

    fonts = _outline_fonts()
    ink = tuple(rng.randint(0, 90) for _ in range(3)) + (255,)
    tiles = []
    for char in label:
        font = ImageFont.truetype(rng.choice(fonts), int(rng.uniform(0.55, 0.8) * big_h))
        tiles.append(_hollow_glyph(char, font, ink, int(rng.uniform(1.25, 2.0) * scale)))    # 1-2 px shrunk
    # Spacing from overlapping by a quarter of a glyph to a third of one apart.
    gaps = [int(rng.uniform(-0.25, 0.33) * t.width) for t in tiles[1:]]
    total = sum(t.width for t in tiles) + sum(gaps)
    fit = min(1.0, (big_w - 4 * scale) / max(total, 1), (big_h - 2 * scale) / max(t.height for t in tiles))
    if fit < 1.0:
        tiles = [t.resize((max(1, int(t.width * fit)), max(1, int(t.height * fit))), Image.Resampling.NEAREST)
                 for t in tiles]
        gaps = [int(g * fit) for g in gaps]
        total = sum(t.width for t in tiles) + sum(gaps)
    text = Image.new("RGBA", (big_w, big_h), (0, 0, 0, 0))
    x = (big_w - total) // 2 + rng.randint(-2, 2) * scale
    for i, tile in enumerate(tiles):
        y = (big_h - tile.height) // 2 + rng.randint(-3, 3) * scale
        text.alpha_composite(tile, (min(max(x, 0), big_w - tile.width), min(max(y, 0), big_h - tile.height)))
        x += tile.width + (gaps[i] if i < len(gaps) else 0)
    # Shrunk by picking pixels, not averaging them: jagged, broken outlines.
    text = text.resize((width, height), Image.Resampling.NEAREST)
    image = Image.alpha_composite(background.convert("RGBA"), text).convert("RGB")
    return _mesh_warp(image, rng, rng.uniform(1.5, 3.5), tuple(int(v) for v in light))


STYLES: Dict[str, Tuple[Callable[[str, random.Random, int, int], Image.Image], str]] = {
    "ink": (draw_ink, ".png"),
    "stamp": (draw_stamp, ".jpg"),
    "outline": (draw_outline, ".png"),
}


def render_heldout(folder: str, style: str, spec: CaptchaSpec, count: int, seed: int | str) -> None:
    """Write ``count`` captchas of ``style`` and their ``labels.tsv`` into ``folder`` (created; must be empty)."""
    draw, extension = STYLES[style]
    if os.path.isdir(folder) and os.listdir(folder):
        raise ValueError(f"{folder}: exists and is not empty; give a new folder")
    _check_alphabet(style, spec)
    os.makedirs(folder, exist_ok=True)
    lines = []
    for index in range(count):
        rng = random.Random(f"heldout-{style}-{seed}-{index}")
        label = sample_label(rng, spec)
        name = f"{style}_{index:05d}{extension}"
        image = draw(label, rng, spec.width, spec.height)
        if extension == ".jpg":
            image.save(os.path.join(folder, name), quality=rng.randint(25, 60))
        else:
            image.save(os.path.join(folder, name))
        lines.append(f"{name}\t{label}\n")
    with open(os.path.join(folder, "labels.tsv"), "w", encoding="utf-8") as handle:
        handle.writelines(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="receives <style>/<split> folders")
    parser.add_argument("--style", choices=sorted(STYLES), required=True)
    parser.add_argument("--splits", default="adapt250,adapt1000,adapt5000,test1000",
                        help="comma-separated <name><count>; each split has its own seed (default: %(default)s)")
    parser.add_argument("--seed_text", default=None,
                        help="the split's seed as this text instead of <seed>-<split> (one split only): redraws "
                             "a set pinned by that text")
    add_config_arguments(parser, ["charset", "max_captcha_digits", "captcha_width", "captcha_height", "seed"])
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        spec = CaptchaSpec.from_config(cfg)
        splits = args.splits.split(",")
        if args.seed_text is not None and len(splits) != 1:
            raise ValueError(f"--seed_text: give one split, not {len(splits)} ({args.splits}): splits that share "
                             "a seed share their images")
        for split in splits:
            match = SPLIT_RE.match(split.strip())
            if not match or int(match.group("count")) <= 0:
                raise ValueError(f"--splits: {split!r} is not <name><count>, e.g. adapt1000")
            folder = os.path.join(args.output_dir, args.style, split.strip())
            seed = args.seed_text if args.seed_text is not None else hash_seed(cfg.seed, split.strip())
            render_heldout(folder, args.style, spec, int(match.group("count")), seed)
            print(f"{folder}: {match.group('count')} captchas of style {args.style}", flush=True)
    except ValueError as err:
        return report_error("heldout_styles.py", err)
    return 0


def hash_seed(seed: int, split: str) -> str:
    """The seed of one split: splits of one style never share an image."""
    return f"{seed}-{split}"


if __name__ == "__main__":
    sys.exit(main())
