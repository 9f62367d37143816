"""The ``varied`` text layout: captchas drawn glyph by glyph, every look drawn anew per image.

``captcha`` (the package) draws one kind of captcha: one colour, one font size range, a fixed
width. Real captchas differ in far more ways, and a model meant to read captchas it has never
seen (the universal base) needs that spread in training. Each image here draws:

- its width from its length (0.45 to 1.2 heights per character, at least 1.6 heights);
- its background: flat, a two-colour gradient, coarse colour noise, a grid, or a checkerboard;
- its fonts (one for all characters, or one each) and sizes, from the style's fonts and sizes;
- its ink: one colour, or one per character, each far enough from the background;
- each glyph filled, bold, or hollow (outline only), rotated, standing on one baseline (jittered by a
  few pixels) at nearly one size, so that its case shows, spaced from overlapping by a sixth of a glyph
  to a third of a glyph apart;
- its clutter: dots, arcs and lines in the ink or other colours, in front of and behind the text.

The style's other options (strike lines, whole-image augmentations) apply afterwards, as for the
``captcha`` layout. Every draw comes from the ``random.Random`` passed in.
"""
from __future__ import annotations

import math
import random
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from PIL.ImageFont import FreeTypeFont

Color = Tuple[int, int, int]
MIN_CONTRAST = 80          # the least luminance gap between ink and the mean background


def _luminance(color: Sequence[float]) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


def _color(rng: random.Random, low: int, high: int) -> Color:
    return tuple(rng.randint(low, high) for _ in range(3))


def _ink(rng: random.Random, text_colors: Tuple[int, int], background_luminance: float) -> Color:
    """A text colour at least MIN_CONTRAST grey levels from the background (darkest/lightest if none is drawn)."""
    for _ in range(50):
        color = _color(rng, *text_colors)
        if abs(_luminance(color) - background_luminance) >= MIN_CONTRAST:
            return color
    return (0, 0, 0) if background_luminance >= 128 else (255, 255, 255)


def _background(rng: random.Random, size: Tuple[int, int], colors: Tuple[int, int]) -> np.ndarray:
    """An HxWx3 float background of one of five kinds, channel values within ``colors``."""
    width, height = size
    low, high = colors
    first = np.asarray(_color(rng, low, high), np.float32)
    # The second colour (gradient end, grid lines, checker squares) stays near the first, as on real
    # captchas, where the background must not hide the text.
    second = np.clip(first + np.asarray([rng.uniform(-60, 60) for _ in range(3)], np.float32), low, high)
    kind = rng.choice(("flat", "flat", "gradient", "noise", "grid", "checker"))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "flat":
        return np.broadcast_to(first, (height, width, 3)).copy()
    if kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xs / width * math.cos(angle) + ys / height * math.sin(angle)
        ramp = ((ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6))[..., None]
        return first * (1 - ramp) + second * ramp
    if kind == "noise":
        cell = rng.randint(2, max(2, height // 4))
        grid = np.random.default_rng(rng.getrandbits(64)).uniform(low, high, (height // cell + 2, width // cell + 2, 3))
        coarse = Image.fromarray(grid.astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
        mix = rng.uniform(0.1, 0.4)
        return first * (1 - mix) + np.asarray(coarse, np.float32) * mix
    step = rng.randint(4, max(5, height // 3))
    angle = rng.uniform(-0.6, 0.6)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    if kind == "grid":
        line = ((np.mod(u, step) < 1) | (np.mod(v, step) < 1))[..., None]
    else:
        line = ((np.floor(u / step) + np.floor(v / step)) % 2 == 0)[..., None]
    return np.where(line, second, first)


def _glyph(char: str, font: FreeTypeFont, color: Color, look: str, angle: float) -> Tuple[Image.Image, float]:
    """One character as an RGBA tile cropped to its ink (filled, bold or hollow, rotated by ``angle`` degrees),
    and the row of the font's baseline in it.

    The baseline is what makes case readable: an ``x`` and an ``X`` of one font differ only in where they
    stand against it, so glyphs are placed by it, never centred on their own ink.
    """
    stroke = max(1, font.size // 18)
    left, _, right, _ = font.getbbox(char, stroke_width=stroke, anchor="ls")
    ascent, descent = font.getmetrics()
    margin = stroke + 2
    tile = Image.new("RGBA", (right - left + 2 * margin, ascent + descent + 2 * margin), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    origin = (margin - left, margin + ascent)
    ink = color + (255,)
    if look == "filled":
        draw.text(origin, char, font=font, fill=ink, anchor="ls")
    elif look == "bold":
        draw.text(origin, char, font=font, fill=ink, anchor="ls", stroke_width=stroke, stroke_fill=ink)
    else:
        # Hollow: the stroked glyph with its inside punched out (ImageDraw writes the transparent
        # fill over the pixels instead of blending it).
        draw.text(origin, char, font=font, fill=ink, anchor="ls", stroke_width=stroke, stroke_fill=ink)
        draw.text(origin, char, font=font, fill=(0, 0, 0, 0), anchor="ls")
    height = tile.height
    tile = tile.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    # The baseline turns about the tile's centre with it; at the centre column it moves by cos(angle).
    baseline = tile.height / 2 + (origin[1] - height / 2) * math.cos(math.radians(angle))
    box = tile.getbbox() or (0, 0, tile.width, tile.height)
    return tile.crop(box), baseline - box[1]


def _clutter(draw: ImageDraw.ImageDraw, rng: random.Random, size: Tuple[int, int], inks: List[Color],
             dots: int, curves: int) -> None:
    """Dots, arcs and straight lines in the captcha's inks or random colours."""
    width, height = size
    pick = lambda: rng.choice(inks) if rng.random() < 0.6 else _color(rng, 0, 255)  # noqa: E731
    for _ in range(rng.randint(0, dots)):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.choice((0, 0, 1, 1, 2))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=pick())
    for _ in range(rng.randint(0, curves)):
        if rng.random() < 0.5:
            x0, y0 = rng.uniform(-0.2, 0.6) * width, rng.uniform(-0.5, 0.5) * height
            x1, y1 = x0 + rng.uniform(0.4, 1.2) * width, y0 + rng.uniform(0.8, 2.0) * height
            start = rng.uniform(0, 360)
            draw.arc((x0, y0, x1, y1), start, start + rng.uniform(60, 200), fill=pick(), width=rng.randint(1, 3))
        else:
            draw.line((rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0, height)),
                      fill=pick(), width=rng.randint(1, 3))


def draw_varied(label: str, rng: random.Random, height: int, font_for: Callable[[int, int], FreeTypeFont],
                font_count: int, font_sizes: Sequence[int], text_colors: Tuple[int, int],
                background_colors: Tuple[int, int], char_rotation: float, noise_dots: int,
                noise_curves: int) -> Tuple[Image.Image, Color, Color]:
    """``(RGB image, its mean background colour, its first ink)`` of ``label``, ``height`` pixels high.

    ``font_for(index, size)`` returns font ``index`` (of ``font_count``) at ``size`` pixels.
    """
    width = int(height * max(1.6, len(label) * rng.uniform(0.45, 1.2) + rng.uniform(0.2, 0.8)))
    ground = _background(rng, (width, height), background_colors)
    luminance = _luminance(ground.reshape(-1, 3).mean(axis=0))
    one_ink = rng.random() < 0.6
    inks = [_ink(rng, text_colors, luminance)] * len(label) if one_ink else \
        [_ink(rng, text_colors, luminance) for _ in label]
    one_font = rng.random() < 0.7
    fonts = [rng.randrange(font_count)] * len(label) if one_font else [rng.randrange(font_count) for _ in label]
    size = rng.choice(font_sizes)
    looks = rng.choices(("filled", "bold", "hollow"), weights=(6, 3, 1))[0]
    tiles, baselines = [], []
    for char, ink, index in zip(label, inks, fonts):
        # Sizes vary a little within a label, never so much that a small capital passes for lower case.
        char_size = size if rng.random() < 0.7 else max(8, round(size * rng.uniform(0.88, 1.12)))
        look = looks if rng.random() < 0.85 else rng.choice(("filled", "bold", "hollow"))
        tile, baseline = _glyph(char, font_for(index, char_size), ink, look,
                                rng.uniform(-char_rotation, char_rotation))
        tiles.append(tile)
        baselines.append(baseline)
    spacing = rng.uniform(-0.15, 0.3)
    gaps = [int((spacing + rng.uniform(-0.08, 0.08)) * t.width) for t in tiles[1:]]
    total = sum(t.width for t in tiles) + sum(gaps)
    # Rows against the common baseline (0), each glyph jittered by up to 6 % of the font size.
    tops = [rng.uniform(-0.06, 0.06) * size - b for b in baselines]
    line_top = min(tops)
    line_height = max(top + t.height for top, t in zip(tops, tiles)) - line_top
    scale = min(1.0, (width - 4) / max(total, 1), (height - 2) / max(line_height, 1))
    if scale < 1.0:
        tiles = [t.resize((max(1, int(t.width * scale)), max(1, int(t.height * scale))), Image.Resampling.BICUBIC)
                 for t in tiles]
        gaps = [int(g * scale) for g in gaps]
        total = sum(t.width for t in tiles) + sum(gaps)
        tops, line_top, line_height = [v * scale for v in tops], line_top * scale, line_height * scale
    image = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8)).convert("RGBA")
    behind = ImageDraw.Draw(image)
    _clutter(behind, rng, (width, height), inks, noise_dots // 2, noise_curves)
    x = rng.randint(2, max(2, width - total - 2))
    line_y = rng.uniform(0, max(0.0, height - line_height)) - line_top
    for tile, gap, top in zip(tiles, [0] + gaps, tops):
        x += gap
        y = int(round(line_y + top))
        image.alpha_composite(tile, (max(0, min(x, width - tile.width)), max(0, min(y, height - tile.height))))
        x += tile.width
    _clutter(ImageDraw.Draw(image), rng, (width, height), inks, noise_dots - noise_dots // 2, noise_curves)
    mean = tuple(int(v) for v in ground.reshape(-1, 3).mean(axis=0))
    return image.convert("RGB"), mean, inks[0]
