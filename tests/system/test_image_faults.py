"""Images that used to be dropped, misread or crash the pipeline (issue 23): every one is now read as
a viewer shows it, or refused in one line naming it."""
import io
import os
import re
import shutil
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import process_data
from src.captcha_spec import CaptchaSpec
from src.data.images import check_images, decode_bgr, list_image_files, load_bgr
from src.data.labels import list_samples
from src.dataset import CaptchaSource
from conftest import REPO, TINY, last_error_line, run_py, snapshot

PREDICT, TRAIN = os.path.join(REPO, "predict.py"), os.path.join(REPO, "train.py")
RELEASED = os.path.join(REPO, "pretrained", "warpctc.ckpt")
DIGITS = CaptchaSpec()


@pytest.fixture(scope="module")
def captchas(tmp_path_factory):
    """4 rendered test captchas (seed 100) that the released model reads right: 2680, 0432, 01, 7886."""
    folder = tmp_path_factory.mktemp("faults") / "four"
    process_data.render_split(str(folder), 4, seed=100, split="test", workers=1, progress=False)
    return sorted(str(folder / n) for n in os.listdir(folder) if n.endswith(".png"))


def grey_pixels(seed=0):
    """A 64x160 8-bit grey image with every grey level 0-255 and random structure."""
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 160)).astype(np.uint8)
    pixels.flat[:256] = np.arange(256)
    return pixels


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def hand_made_png(idat, width=160, height=64):
    """A grey 8-bit PNG whose IDAT holds ``idat``; every chunk's CRC is valid."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


RAW_ROWS = b"".join(b"\x00" + bytes([200] * 160) for _ in range(64))     # filter byte + 160 grey pixels per row
BAD_PNGS = {
    "garbage": (hand_made_png(b"this is no zlib stream" * 8), "broken data stream"),
    "truncated": (hand_made_png(zlib.compress(RAW_ROWS)[:40]), "image file is truncated"),
    # A complete zlib stream of half the rows: Pillow reads it without a word, the rest black.
    "short": (hand_made_png(zlib.compress(RAW_ROWS[:len(RAW_ROWS) // 2])), "image data stops after 5152 of 10304"),
}


# --- item 3: names with an image extension that are not image files ---------------------------------

def test_predict_refuses_a_broken_symlink_in_a_folder(captchas, tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for path in captchas[:2]:
        shutil.copy(path, folder)
    os.symlink(tmp_path / "gone" / "02-55.png", folder / "02-55.png")
    before = {name: os.readlink(folder / name) if os.path.islink(folder / name) else (folder / name).read_bytes()
              for name in os.listdir(folder)}
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, folder])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_error_line(proc) == (f"predict.py: error: {folder / '02-55.png'}: a symbolic link to "
                                     f"{tmp_path / 'gone' / '02-55.png'}, which does not exist")
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert {name: os.readlink(folder / name) if os.path.islink(folder / name) else (folder / name).read_bytes()
            for name in os.listdir(folder)} == before


@pytest.mark.parametrize("kind", ["folder", "fifo", "socket", "link to a folder"])
def test_non_files_with_an_image_name_are_refused_unopened(captchas, tmp_path, kind):
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(captchas[0], folder)
    odd = folder / "9-1.png"
    if kind == "folder":
        odd.mkdir()
    elif kind == "fifo":
        os.mkfifo(odd)                  # opening it would block: the test would hang
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(odd))
    else:
        (tmp_path / "elsewhere").mkdir()
        os.symlink(tmp_path / "elsewhere", odd)
    what = {"folder": "a folder", "fifo": "a FIFO (named pipe)", "socket": "a socket", "link to a folder": "a folder"}
    for listing in (lambda: list_image_files(str(folder)), lambda: list_samples(str(folder), DIGITS)):
        with pytest.raises(ValueError, match=f"^{re.escape(str(odd))}: {re.escape(what[kind])}, not an image file$"):
            listing()
    if kind == "socket":
        server.close()


def test_labels_tsv_names_a_listed_broken_symlink_and_its_target(captchas, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(captchas[0], folder / "a.png")
    os.symlink("/nowhere/b.png", folder / "b.png")
    (folder / "labels.tsv").write_text("a.png\t2680\nb.png\t55\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{folder / 'labels.tsv'}:2: {folder / 'b.png'}: a symbolic link to "
                                         f"/nowhere/b.png, which does not exist$"):
        list_samples(str(folder), DIGITS)


def test_labels_tsv_that_is_a_folder_is_an_error(captchas, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(captchas[0], folder)
    (folder / "labels.tsv").mkdir()
    with pytest.raises(ValueError, match=f"^{folder / 'labels.tsv'}: a folder, not a file of labels; move it "
                                         f"away to label the images by their file names$"):
        list_samples(str(folder), DIGITS)


# --- small items: names labels.tsv could not list ----------------------------------------------------

def test_an_image_named_with_a_leading_hash_is_listed_as_dot_slash(captchas, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(captchas[0], folder / "#0.png")
    shutil.copy(captchas[1], folder / "1.png")
    (folder / "labels.tsv").write_text("#0.png\t2680\n1.png\t0432\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels.tsv: 1 image\(s\) of the folder are not listed \(e.g. #0.png\); "
                                         r"a line starting with '#' is a comment: list it as ./#0.png$"):
        list_samples(str(folder), DIGITS)
    (folder / "labels.tsv").write_text("./#0.png\t2680\n1.png\t0432\n", encoding="utf-8")
    assert list_samples(str(folder), DIGITS) == [(str(folder / "#0.png"), "2680"), (str(folder / "1.png"), "0432")]


def test_a_backslash_in_a_listed_name_is_a_folder_separator_only_if_the_name_is_not_there(captchas, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(captchas[0], folder / "a\\b.png")        # a Linux name holding a backslash
    shutil.copy(captchas[1], folder / "c.png")
    (folder / "labels.tsv").write_text("a\\b.png\t2680\nC:\\shots\\c.png\t0432\n", encoding="utf-8")
    assert list_samples(str(folder), DIGITS) == [(str(folder / "a\\b.png"), "2680"), (str(folder / "c.png"), "0432")]
    (folder / "labels.tsv").write_text("a\\b.png\t2680\nC:\\shots\\c.png\t0432\nx\\ghost.png\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels.tsv:3: x\\ghost.png does not exist in "):
        list_samples(str(folder), DIGITS)


# --- item 4: 16-bit and float pixels; other modes -----------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda g: png_bytes(Image.fromarray(g.astype(np.uint16) * 257)),                    # full-range 16-bit PNG
    lambda g: png_bytes(Image.fromarray(g.astype(np.uint16) << 8)),                     # high byte only
    lambda g: png_bytes(Image.fromarray((g.astype(np.uint16) * 257).astype(">u2"))),    # big-endian source
    lambda g: b"P5 160 64 65535\n" + (g.astype(">u2") * 257).tobytes(),                # 16-bit PGM: Pillow's mode I
], ids=["png-x257", "png-shift8", "png-I;16B", "pgm-I"])
def test_16_bit_grey_reads_like_its_8_bit_copy(make):
    grey = grey_pixels()
    eight = decode_bgr(png_bytes(Image.fromarray(grey, "L")), "8.png")
    sixteen = decode_bgr(make(grey), "16.png")
    assert sixteen.shape == eight.shape == (64, 160, 3)
    assert np.abs(sixteen.astype(int) - eight.astype(int)).max() <= 1
    assert sixteen.min() == 0 and sixteen.mean() < 200          # not read blank (Pillow's conversion: all 255)


def test_float_pixels_are_scaled_and_out_of_range_ones_refused():
    grey = grey_pixels()
    eight = decode_bgr(png_bytes(Image.fromarray(grey, "L")), "8.png")

    def tiff(values):
        buffer = io.BytesIO()
        Image.fromarray(values.astype(np.float32), "F").save(buffer, "TIFF")
        return buffer.getvalue()
    assert np.array_equal(decode_bgr(tiff(grey / 255.0), "x.tif"), eight)         # 0-1
    assert np.array_equal(decode_bgr(tiff(grey), "x.tif"), eight)                 # 0-255
    with pytest.raises(ValueError, match=r"^x.tif: not a readable image \(ValueError: float pixel values from 0.0 "
                                         r"to 65535.0: only 0-1 and 0-255 are read\)$"):
        decode_bgr(tiff(grey * 257.0), "x.tif")


def test_8_bit_modes_read_as_before_and_transparency_is_laid_on_white(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (64, 160, 3), dtype=np.uint8)
    # RGB, L, P and 1-bit: exactly Pillow's RGB conversion, as always (released models' numbers).
    for image, name in ((Image.fromarray(rgb), "rgb.png"), (Image.fromarray(rgb[..., 0]), "l.png"),
                        (Image.fromarray(rgb).convert("P"), "p.png"), (Image.fromarray(rgb[..., 0] > 99), "one.bmp"),
                        (Image.fromarray(rgb).convert("P"), "p.gif"), (Image.fromarray(rgb), "rgb.jpg")):
        image.save(tmp_path / name)
        with Image.open(tmp_path / name) as handle:
            assert "transparency" not in handle.info
            expected = np.asarray(handle.convert("RGB"))[:, :, ::-1]
        assert np.array_equal(load_bgr(str(tmp_path / name)), expected), name
    # Black text on a transparent background that is stored black: as a viewer shows it, on white.
    rgba = np.zeros((64, 160, 4), dtype=np.uint8)
    rgba[20:40, 30:90] = (10, 20, 30, 255)
    half = rgba.copy()
    half[..., 3] = np.where(rgba[..., 3] == 255, 255, 128)     # half-transparent black -> mid grey
    transparent = {"rgba.png": Image.fromarray(rgba), "la.png": Image.fromarray(rgba[..., [0, 3]], "LA"),
                   "half.png": Image.fromarray(half), "index.gif": Image.fromarray(rgba)}
    for name, image in transparent.items():
        image.save(tmp_path / name)
    key = Image.fromarray(rgba[..., :3])
    key.save(tmp_path / "key.png", transparency=(0, 0, 0))                    # an RGB PNG with a tRNS colour key
    for name, background in (("rgba.png", 255), ("la.png", 255), ("index.gif", 255), ("key.png", 255),
                             ("half.png", 127)):
        bgr = load_bgr(str(tmp_path / name))
        assert bgr.shape == (64, 160, 3)
        assert abs(int(bgr[0, 0, 0]) - background) <= 1 and (bgr[0, 0] == bgr[0, 0, 0]).all(), name
        assert bgr[30, 50].tolist() == ([10, 10, 10] if name == "la.png" else [30, 20, 10]), name
    # An opaque RGBA image is its RGB.
    Image.fromarray(np.dstack([rgb, np.full((64, 160), 255, np.uint8)])).save(tmp_path / "opaque.png")
    assert np.array_equal(load_bgr(str(tmp_path / "opaque.png")), rgb[:, :, ::-1])


# --- item 8: EXIF orientation -------------------------------------------------------------------------

def test_exif_orientation_6_is_applied(captchas, tmp_path):
    with Image.open(captchas[0]) as handle:
        upright = handle.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6                        # "rotate 90 degrees clockwise to view": the pixels are stored turned left
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    with Image.open(tmp_path / "phone.jpg") as handle:
        assert handle.getexif()[0x0112] == 6 and handle.size == (64, 160)
        stored = np.asarray(handle.convert("RGB"))
    bgr = load_bgr(str(tmp_path / "phone.jpg"))
    assert bgr.shape == (64, 160, 3)
    assert np.array_equal(bgr, np.rot90(stored, -1)[:, :, ::-1])                       # turned right: upright
    assert np.abs(bgr.astype(int) - np.asarray(upright)[:, :, ::-1]).mean() < 3      # the original, up to JPEG


def test_predict_reads_16_bit_and_exif_rotated_images_like_their_8_bit_upright_copies(captchas, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    with Image.open(captchas[0]) as handle:
        grey = np.asarray(handle.convert("L"))
    Image.fromarray(grey, "L").save(folder / "a 8-bit.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "b 16-bit.png")
    with Image.open(captchas[1]) as handle:
        upright = handle.convert("RGB")
    upright.save(folder / "c upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "d phone.jpg", quality=95, exif=exif.tobytes())
    before = snapshot(folder)
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, folder, "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [os.path.basename(row[0]) for row in rows] == ["a 8-bit.png", "b 16-bit.png", "c upright.jpg",
                                                          "d phone.jpg"]
    assert rows[1][1:] == rows[0][1:] and rows[0][1] == "2680"     # not "" at 1.0000 (read white)
    assert rows[3][1] == rows[2][1] == "0432"                       # not read sideways
    assert snapshot(folder) == before


# --- item 9: PNGs whose CRCs are valid but whose pixels cannot be decoded ----------------------------

@pytest.mark.parametrize("fault", sorted(BAD_PNGS))
def test_undecodable_png_with_valid_crcs_is_refused_by_the_check_and_the_reader(tmp_path, fault):
    data, why = BAD_PNGS[fault]
    bad = tmp_path / "3-55.png"
    bad.write_bytes(data)
    with Image.open(bad) as handle:
        handle.verify()                      # what the check used to do: it passes
    good = tmp_path / "2-1.png"
    good.write_bytes(hand_made_png(zlib.compress(RAW_ROWS)))
    assert load_bgr(str(good)).shape == (64, 160, 3)
    with pytest.raises(ValueError, match=f"^{bad}: not a readable PNG image \\(.*{why}.*\\)$"):
        check_images([str(good), str(bad)])
    # The reader inside the pipeline (after a file changed since the check): one line naming the file.
    source = CaptchaSource([(str(good), "1"), (str(bad), "55")], DIGITS)
    assert source[0][0].shape == (64, 160, 3)
    with pytest.raises(ValueError, match=f"^{bad}: not a readable PNG image \\(.*{why}.*\\)$"):
        source[1]


def test_train_and_predict_refuse_an_undecodable_png_before_any_step(captchas, tmp_path):
    folder = tmp_path / "train"
    process_data.render_split(str(folder), 16, seed=5, split="train", workers=1, progress=False)
    bad = folder / "16-55.png"
    bad.write_bytes(BAD_PNGS["garbage"][0])
    before = snapshot(folder)
    expected = f"{bad}: not a readable PNG image (OSError: broken data stream when reading image file)"
    work = tmp_path / "work"
    work.mkdir()
    proc = run_py([TRAIN, "--dataset_path", folder, *TINY, "--epoch_size", "1"], cwd=work)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_error_line(proc) == f"train.py: error: {expected}"
    assert "Traceback" not in proc.stderr and "epoch:" not in proc.stdout
    shots = tmp_path / "shots"
    shots.mkdir()
    shutil.copy(captchas[0], shots / "1.png")
    shutil.copy(bad, shots / "2.png")
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, shots, "--quiet"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_error_line(proc) == f"predict.py: error: {expected.replace(str(bad), str(shots / '2.png'))}"
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert snapshot(folder) == before


# --- one reader for files and uploaded bytes ---------------------------------------------------------

def test_decode_bgr_of_the_bytes_is_load_bgr_of_the_file(captchas):
    with open(captchas[0], "rb") as handle:
        data = handle.read()
    assert np.array_equal(decode_bgr(data, "upload.png"), load_bgr(captchas[0]))
    with pytest.raises(ValueError, match=r"^upload.png: not a readable PNG image \(UnidentifiedImageError: cannot "
                                         r"identify image file 'upload.png'\)$"):
        decode_bgr(b"not an image", "upload.png")


def test_an_image_that_goes_bad_after_the_check_is_one_line_naming_it(captchas, tmp_path, monkeypatch, capsys):
    """A file changed on disk between the up-front check and its read (simulated by skipping the check)
    stops predict.py with one line naming it, not MindSpore's two call stacks."""
    import predict
    import src.dataset

    folder = tmp_path / "race"
    shutil.copytree(os.path.dirname(captchas[0]), folder)
    victim = os.path.basename(captchas[1])
    (folder / victim).write_bytes(b"not a png any more")
    monkeypatch.setattr(src.dataset, "check_images", lambda paths, workers=4, max_pixels=0: None)
    status = predict.main(["--checkpoint_path", RELEASED, "--quiet", str(folder)])
    out = capsys.readouterr()
    assert status == 2
    lines = [line for line in out.err.splitlines() if line.strip() and "[WARNING]" not in line]
    assert len(lines) == 1, out.err
    assert lines[0].startswith("predict.py: error: ") and victim in lines[0] and "not a readable PNG" in lines[0]


def test_predict_names_a_broken_link_given_on_its_command_line(tmp_path):
    import predict

    link = tmp_path / "gone.png"
    os.symlink(tmp_path / "missing.png", link)
    with pytest.raises(ValueError, match=r"gone\.png: a symbolic link to .*missing\.png, which does not exist"):
        predict.collect_images([str(link)])


def test_predict_refuses_an_image_over_the_pixel_limit_from_its_header(captchas, tmp_path):
    # A small file that decodes to gigabytes: refused before decoding, in one line naming it.
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 1000), 255).save(huge, optimize=True)
    assert huge.stat().st_size < 100_000
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, captchas[0], huge])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_error_line(proc) == (f"predict.py: error: {huge}: 5000x1000 is 5,000,000 pixels, over "
                                     f"--max_pixels 4,000,000")
    assert proc.stdout == ""
    # The limit is the server's option, and raising it reads the image.
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, "--max_pixels", "6000000", huge])
    assert proc.returncode == 0 and proc.stdout.startswith(f"{huge}\t"), proc.stderr[-2000:]
