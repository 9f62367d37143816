"""Faults of the render style: font sizes beyond the image, font entries that are not regular files
(a FIFO would block forever), and the DejaVu fonts taken from the matplotlib package, not the system."""
import os
import re
import shutil

import pytest

import src.data.render
from src.captcha_spec import CaptchaSpec
from src.data.manifest import read_manifest
from src.data.render import PACKAGE_FONTS, Renderer, RenderStyle, package_font_files
from conftest import REPO, TINY, last_error_line, run_py

PROCESS_DATA, TRAIN = os.path.join(REPO, "process_data.py"), os.path.join(REPO, "train.py")
# A FIFO opened as a font blocks until a writer comes: a run that reaches it never ends.
BLOCKED = 30


def render(tmp_path, *options, env=None):
    """process_data.py rendering 3 test images into tmp_path/out with ``options``."""
    return run_py([PROCESS_DATA, "--output_dir", tmp_path / "out", "--splits", "test", "--test_count", "3", "--quiet",
                   *options], timeout=BLOCKED, env=env)


def test_font_sizes_beyond_twice_the_image_height_are_refused_naming_the_option(tmp_path):
    proc = render(tmp_path, "--font_sizes", "100000")
    assert (proc.returncode, proc.stderr) == (2, "process_data.py: error: --font_sizes 100000: 100000 pixels is more "
                                                 "than 2 x --captcha_height 64 = 128, the largest size drawn into an "
                                                 "image that high\n")
    assert not (tmp_path / "out").exists()
    proc = render(tmp_path, "--font_sizes", "30,41", "--captcha_height", "20")
    assert (proc.returncode, proc.stderr) == (2, "process_data.py: error: --font_sizes 30,41: 41 pixels is more "
                                                 "than 2 x --captcha_height 20 = 40, the largest size drawn into an "
                                                 "image that high\n")
    proc = render(tmp_path, "--font_sizes", "30,40", "--captcha_height", "20")       # the bound itself
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("fonts", ["captcha", "captcha,dejavu-sans"])
def test_train_py_names_the_font_sizes_option_too(tmp_path, fonts):
    proc = run_py([TRAIN, "--synthetic_images", "32", *TINY, "--train_steps", "1", "--font_sizes", "42,100000",
                   "--fonts", fonts], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc) == ("train.py: error: --font_sizes 42,100000: 100000 pixels is more than 2 x "
                                     "--captcha_height 64 = 128, the largest size drawn into an image that high")
    assert "Traceback" not in proc.stderr and not (tmp_path / "checkpoint").exists()


def _fifo(folder):
    os.mkfifo(folder / "x.ttf")
    return "a FIFO"


def _sub_folder(folder):
    (folder / "x.ttf").mkdir()
    return "a folder"


def _broken_link(folder):
    os.symlink(folder / "gone.ttf", folder / "x.ttf")
    return "a broken symbolic link"


@pytest.mark.parametrize("make", [_fifo, _sub_folder, _broken_link])
def test_a_font_entry_that_is_not_a_regular_file_is_refused_never_opened(tmp_path, make):
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    shutil.copy(package_font_files("dejavu-sans")[0], fonts / "a.ttf")
    kind = make(fonts)
    # In a --fonts folder, and named itself (a folder named so is a font folder: empty here).
    for entry in (fonts,) if kind == "a folder" else (fonts, fonts / "x.ttf"):
        proc = render(tmp_path, "--fonts", entry)
        assert (proc.returncode, proc.stderr) == (2, f"process_data.py: error: --fonts {fonts / 'x.ttf'}: is {kind}, "
                                                     "not a font file\n"), entry
        assert not (tmp_path / "out").exists()
    assert os.path.lexists(fonts / "x.ttf")


def test_fonts_system_skips_a_fifo_without_blocking(tmp_path, monkeypatch):
    # ~/.fonts is one of the system font folders; the copied face keeps `system` usable where the
    # machine has no fonts of its own.
    user_fonts = tmp_path / "home" / ".fonts"
    user_fonts.mkdir(parents=True)
    os.mkfifo(user_fonts / "pipe.ttf")
    shutil.copy(package_font_files("dejavu-serif")[0], user_fonts / "serif.ttf")
    proc = render(tmp_path, "--fonts", "system", env={"HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    assert read_manifest(str(tmp_path / "out" / "test"))["style"] == {"fonts": ["system"]}
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert str(user_fonts / "serif.ttf") in src.data.render.system_font_files()
    assert str(user_fonts / "pipe.ttf") not in src.data.render.system_font_files()


def test_the_dejavu_families_come_from_the_matplotlib_package(tmp_path):
    import matplotlib

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    for family, names in PACKAGE_FONTS.items():
        assert package_font_files(family) == [os.path.join(folder, name) for name in names]
    # The shipped robust recipe and the ink held-out style use them, and no path of the system.
    recipe = open(os.path.join(REPO, "configs", "robust.yaml"), encoding="utf-8").read()
    assert re.search(r'^fonts: "captcha,dejavu-sans,dejavu-sans-mono"$', recipe, re.M)
    assert "/usr/share/fonts" not in open(os.path.join(REPO, "research", "heldout_styles.py"), encoding="utf-8").read()
    styled = Renderer(CaptchaSpec(), RenderStyle(fonts=("dejavu-sans-mono",)))
    assert styled.font_files == package_font_files("dejavu-sans-mono")
    proc = render(tmp_path, "--fonts", "captcha,dejavu-serif")
    assert proc.returncode == 0, proc.stderr
    assert len([n for n in os.listdir(tmp_path / "out" / "test") if n.endswith(".png")]) == 3


def test_without_matplotlib_a_dejavu_family_is_one_line(monkeypatch):
    monkeypatch.setattr(src.data.render.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError) as info:
        Renderer(CaptchaSpec(), RenderStyle(fonts=("captcha", "dejavu-sans")))
    assert str(info.value) == ("--fonts dejavu-sans: these fonts come from the matplotlib package, which is not "
                               "installed (pip install -r requirements.txt)")

