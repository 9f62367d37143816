"""The varied text layout (src/data/render_varied.py) that the universal base trains on: each image its own
width, drawn deterministically from its seed, with the fonts the style names less those it excludes."""
import numpy as np
import pytest

from src.captcha_spec import CaptchaSpec
from src.config import Config
from src.data.render import Renderer, RenderStyle

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SPEC = CaptchaSpec(charset=ALNUM, max_length=8, width=256, height=64, resize="keep_aspect")


def varied(**changes) -> RenderStyle:
    values = dict(fonts="captcha,dejavu-sans,dejavu-sans-mono", text_layout="varied", font_sizes="40,50,58",
                  text_colors="0-255", background_colors="0-255", strike_lines=1, image_blur=1.0, jpeg_quality=20)
    values.update(changes)
    return RenderStyle.from_config(Config(**values))


def test_each_image_is_a_pure_function_of_its_seed_and_grows_with_its_label():
    renderer = Renderer(SPEC, varied())
    first, again = renderer.render("aB3xY9", "seed-1"), renderer.render("aB3xY9", "seed-1")
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(renderer.render("aB3xY9", "seed-2")))
    widths = {length: np.mean([renderer.render("W" * length, f"w{length}-{i}").width for i in range(30)])
              for length in (2, 8)}
    heights = {renderer.render("W" * n, f"h{n}").height for n in range(1, 9)}
    assert heights == {64}                                   # the spec's height; the width is the image's own
    assert widths[8] > 2.5 * widths[2], widths
    # Not blank: the text differs from its background in every image.
    for i in range(20):
        pixels = np.asarray(renderer.render("Hello", f"ink-{i}").convert("L"), np.float32)
        assert pixels.std() > 8


def test_image_scale_shrinks_like_a_low_resolution_captcha():
    plain, scaled = Renderer(SPEC, varied()), Renderer(SPEC, varied(image_scale=0.6))
    heights = [scaled.render("abcd", f"s{i}").height for i in range(30)]
    assert plain.render("abcd", "s0").height == 64
    assert min(heights) < 64 * 0.6 and max(heights) <= 64 and len(set(heights)) > 5


def test_exclude_fonts_leaves_those_files_out_and_refuses_to_leave_none():
    renderer = Renderer(SPEC, varied(exclude_fonts="*Mono*,DejaVuSans-Bold*"))
    names = [path.rsplit("/", 1)[-1] for path in renderer.font_files]
    assert "DejaVuSans.ttf" in names and not [n for n in names if "Mono" in n or n.startswith("DejaVuSans-Bold")]
    with pytest.raises(ValueError, match=r"^--exclude_fonts \*\.ttf: leaves none of the \d+ fonts of --fonts$"):
        Renderer(SPEC, varied(fonts="dejavu-sans", exclude_fonts="*.ttf"))


def test_an_unknown_layout_is_one_line_naming_the_option():
    with pytest.raises(ValueError, match=r"^--text_layout must be one of captcha, varied, got 'wild'$"):
        varied(text_layout="wild")


def test_the_universal_recipe_draws_with_the_pinned_fonts_and_none_held_out():
    import os

    from conftest import REPO
    from src.config import load_yaml_overrides

    cfg = Config(**load_yaml_overrides(os.path.join(REPO, "configs", "crnn_universal.yaml")))
    spec = CaptchaSpec.from_config(cfg)
    try:
        renderer = Renderer(spec, RenderStyle.from_config(cfg))
        enough = len(renderer.font_files) >= 200
    except ValueError:
        enough = False
    if not enough:
        if os.environ.get("WARPCTC_REQUIRE_FONTS"):
            pytest.fail("the font packages .ci/run lists are not installed")
        pytest.skip("the universal recipe's fonts are not installed: apt-get install the font packages .ci/run lists")
    names = [os.path.basename(path).lower() for path in renderer.font_files]
    # research/heldout_styles.py's faces (DejaVu Serif, Computer Modern) and symbol faces stay out.
    assert not [n for n in names if n.startswith(("dejavuserif", "cmss", "cmtt", "standardsymbols", "d050000l"))]
    assert {"liberationserif-regular.ttf", "dejavusans.ttf", "firacode-regular.ttf"} <= set(names)
    image = renderer.render("Ab3dEf7h", "recipe")
    assert image.height <= 64 and image.width > 3 * image.height     # image_scale may shrink it


def test_glyphs_stand_on_one_baseline_so_case_shows():
    """An x and an X of one font differ in how high they reach above the baseline they share; the layout
    keeps that, so the label's case is in the image (a case-sensitive model cannot learn it otherwise)."""
    import random

    from PIL import ImageFont

    from src.data.render import package_font_files
    from src.data.render_varied import draw_varied

    font_file = package_font_files("dejavu-sans")[0]

    def ink_rows(label: str, seed: int) -> list:
        """Each glyph's top and bottom ink row, on a plain white background with black ink."""
        image, _, _ = draw_varied(label, random.Random(seed), 64, lambda index, size: ImageFont.truetype(font_file, size),
                                  1, (40,), (0, 0), (255, 255), 0.0, 0, 0)
        ink = np.asarray(image.convert("L")) < 128
        columns = np.flatnonzero(ink.any(axis=0))
        runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)     # one run of columns per glyph
        return [(int(np.flatnonzero(ink[:, r].any(axis=1))[0]), int(np.flatnonzero(ink[:, r].any(axis=1))[-1]))
                for r in runs]

    for label in ("xXxX", "oOoO", "sSsS", "zZzZ"):
        apart = [rows for rows in (ink_rows(label, seed) for seed in range(12)) if len(rows) == 4]
        assert len(apart) >= 4, label                  # glyphs that overlap merge into one run; most do not
        for rows in apart:
            bottoms = [bottom for _, bottom in rows]
            small, capital = [b - t for t, b in rows[0::2]], [b - t for t, b in rows[1::2]]
            assert max(bottoms) - min(bottoms) <= 6, (label, rows)             # one baseline, a few pixels of jitter
            assert max(small) < min(capital), (label, rows)                    # lower case is shorter
            assert sum(small) < 0.85 * sum(capital), (label, rows)
