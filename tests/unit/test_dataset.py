"""src/dataset.py: label coding, batches, sharding and every bad input."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from src.captcha_spec import CaptchaSpec
from src.config import Config
from src.cli import Progress
from src.data.images import check_images, list_image_files, load_bgr
from src.data.labels import list_samples, parse_label
from src.dataset import MEAN, STD, create_dataset

DIGITS = CaptchaSpec()


def data(folder, training=False, **config):
    """create_dataset over ``folder`` with a Config of ``config`` (training: shuffled, full batches)."""
    return create_dataset(str(folder), Config(**config), training=training)


def labels_of(dataset):
    return [DIGITS.decode(row) for _, label in dataset.create_tuple_iterator(output_numpy=True) for row in label]


def test_parse_label_reads_index_dash_label_and_label_names():
    assert parse_label("00042-0731.png", DIGITS) == "0731"
    assert parse_label("/x/7-5.png", DIGITS) == "5"
    assert parse_label("/x/7-5.jpg", DIGITS) == "5"
    assert parse_label("/x/0731.png", DIGITS) == "0731"          # <label>.<ext>, as public captcha sets name them
    for bad, why in (("00042.png", "has 5 characters.*neither <label>.<ext> nor <index>-<label>"),
                     ("IMG.png", "'I', which is not in the alphabet.*neither <label>.<ext>"),
                     ("1-abc.png", "'a', which is not in the alphabet"),
                     ("1-12345.png", "has 5 characters, expected 1 to 4"), ("1-.png", "has 0 characters")):
        with pytest.raises(ValueError, match=why):
            parse_label(bad, DIGITS)


def test_batch_shapes_dtypes_and_statistics(data_root):
    dataset = data(data_root / "train", batch_size=16)
    assert dataset.get_dataset_size() == 10
    image, label = next(dataset.create_tuple_iterator(output_numpy=True))
    assert image.shape == (16, 3, 64, 160) and image.dtype == np.float32
    assert label.shape == (16, 4) and label.dtype == np.int32
    # Independent reference for the first image: BGR, /255, normalise, CHW.
    first = sorted(os.listdir(data_root / "train"))[0]
    with Image.open(data_root / "train" / first) as handle:
        rgb = np.asarray(handle.convert("RGB"), dtype=np.float32)
    expected = ((rgb[:, :, ::-1] / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(image[0], expected, atol=1e-4)
    assert DIGITS.decode(label[0]) == parse_label(first, DIGITS)
    # Captchas are mostly light background: normalised values centre near 0.
    assert -1.5 < float(image.mean()) < 1.0


def test_every_label_once_per_epoch_and_seeded_shuffle(data_root):
    expected = sorted(label for _, label in list_samples(str(data_root / "train"), DIGITS))
    a = labels_of(data(data_root / "train", True, batch_size=16, seed=5))
    b = labels_of(data(data_root / "train", True, batch_size=16, seed=5))
    c = labels_of(data(data_root / "train", True, batch_size=16, seed=6))
    assert sorted(a) == expected
    assert a == b and a != c


@pytest.mark.parametrize("shards", [2, 4])
def test_shards_are_disjoint_and_cover_the_data(data_root, shards):
    files = list_samples(str(data_root / "train"), DIGITS)
    seen = []
    for shard in range(shards):
        part = labels_of(create_dataset(str(data_root / "train"), Config(batch_size=8), num_shards=shards,
                                        shard_id=shard))
        assert len(part) == len(files) // shards
        seen.extend(part)
    assert sorted(seen) == sorted(label for _, label in files)


def copy_some(src, dst, count):
    os.makedirs(dst)
    for name in sorted(os.listdir(src))[:count]:
        shutil.copy(os.path.join(src, name), dst)
    return sorted(os.listdir(dst))


def test_missing_folder_and_folder_without_png(tmp_path):
    with pytest.raises(ValueError, match=f"dataset folder {tmp_path / 'nope'}: does not exist"):
        data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no .png/.jpg/.jpeg/.gif/.bmp files"):
        data(tmp_path / "empty")


def test_badly_named_png_is_an_error(data_root, tmp_path):
    folder = tmp_path / "d"
    names = copy_some(data_root / "train", folder, 20)
    os.rename(folder / names[3], folder / "0003-12345.png")
    with pytest.raises(ValueError, match="0003-12345.png: label '12345' has 5 characters, expected 1 to 4"):
        data(folder, True, batch_size=4)


@pytest.mark.parametrize("damage", ["truncate", "text"])
def test_unreadable_png_is_an_error_naming_the_file(data_root, tmp_path, damage):
    folder = tmp_path / "d"
    names = copy_some(data_root / "train", folder, 20)
    victim = folder / names[5]
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:300])
    else:
        victim.write_text("this is not an image")
    with pytest.raises(ValueError, match=f"{victim}: not a readable PNG image"):
        data(folder, True, batch_size=4)


def test_fewer_images_than_one_batch_per_shard(data_root, tmp_path):
    folder = tmp_path / "d"
    copy_some(data_root / "train", folder, 20)
    with pytest.raises(ValueError, match="20 images give 10 per shard .2 shard.s.., fewer than one batch of 16"):
        create_dataset(str(folder), Config(batch_size=16), num_shards=2, shard_id=0)


def test_grayscale_rgba_and_other_sizes_are_converted(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 160), dtype=np.uint8), "L").save(folder / "0-1.png")
    Image.fromarray(rng.integers(0, 255, (64, 160, 4), dtype=np.uint8), "RGBA").save(folder / "1-22.png")
    Image.fromarray(rng.integers(0, 255, (50, 200, 3), dtype=np.uint8), "RGB").save(folder / "2-333.png")
    Image.fromarray(rng.integers(0, 255, (64, 160), dtype=np.uint8), "L").convert("P").save(folder / "3-4444.png")
    dataset = data(folder, batch_size=4)
    image, label = next(dataset.create_tuple_iterator(output_numpy=True))
    assert image.shape == (4, 3, 64, 160)
    assert [DIGITS.decode(r) for r in label] == ["1", "22", "333", "4444"]
    # Grayscale becomes three equal channels (before per-channel normalisation).
    gray = image[0] * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None]
    np.testing.assert_allclose(gray[0], gray[1], atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="shard_id must be in"):
        create_dataset("x", Config(), num_shards=2, shard_id=2)


def test_image_folders_list_png_jpeg_gif_bmp_only(tmp_path):
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for name, kind in (("b.png", "PNG"), ("a.JPG", "JPEG"), ("c.jpeg", "JPEG"), ("d.gif", "GIF"), ("e.BMP", "BMP"),
                       ("f.webp", "WEBP")):
        Image.fromarray(pixels).save(tmp_path / name, format=kind)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "g.txt").mkdir()                        # a folder without an image's name is not looked at
    assert [os.path.basename(p) for p in list_image_files(str(tmp_path))] == [
        "a.JPG", "b.png", "c.jpeg", "d.gif", "e.BMP"]
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"holds no \.png/\.jpg/\.jpeg/\.gif/\.bmp files"):
        list_image_files(str(tmp_path / "none"))


def test_gif_is_read_from_its_first_frame(tmp_path):
    first = np.zeros((64, 160, 3), dtype=np.uint8)
    first[:, :80] = (255, 0, 0)                          # left half red, in RGB
    second = np.full((64, 160, 3), 255, dtype=np.uint8)
    frames = [Image.fromarray(first), Image.fromarray(second)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    bgr = load_bgr(str(tmp_path / "anim.gif"))
    assert bgr.shape == (64, 160, 3)
    assert bgr[0, 0].tolist() == [0, 0, 255] and bgr[0, 159].tolist() == [0, 0, 0]   # BGR of the first frame


def test_truncated_jpeg_and_non_image_are_errors_naming_the_file(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 160, 3), dtype=np.uint8)).save(tmp_path / "x.jpg", quality=90)
    data = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "x.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f"{tmp_path / 'x.jpg'}: not a readable JPEG image"):
        check_images([str(tmp_path / "x.jpg")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=f"{tmp_path / 'notes.txt'}: not a readable image"):
        check_images([str(tmp_path / "notes.txt")])


def test_progress_lines_go_to_stderr_and_end_with_the_total(capsys):
    every = Progress("eval", 10, interval=0.0)
    for count in (4, 4, 2):
        every.add(count)
    out, err = capsys.readouterr()
    assert out == ""
    assert [line.split(" (")[0] for line in err.splitlines()] == [
        "eval: 4/10 images", "eval: 8/10 images", "eval: 10/10 images"]
    assert err.splitlines()[-1].endswith(" images/s)")
    rare = Progress("predict", 10, interval=3600.0)      # no line is due before the end
    for count in (4, 4, 2):
        rare.add(count)
    assert [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()] == ["predict: 10/10 images"]
    quiet = Progress("predict", 10, quiet=True, interval=0.0)
    quiet.add(10)
    assert capsys.readouterr().err == ""


HEX = CaptchaSpec(charset="0123456789ABCDEF")


def labelled_folder(data_root, folder, formats=("JPEG", "GIF", "PNG", "BMP"), count=8):
    """Copies of rendered captchas under label-free names in several formats, with their true labels."""
    folder.mkdir()
    names, truth = [], {}
    for i, name in enumerate(sorted(n for n in os.listdir(data_root / "test") if n.endswith(".png"))[:count]):
        fmt = formats[i % len(formats)]
        new = f"shot {i:02d}.{ {'JPEG': 'jpg', 'GIF': 'gif', 'PNG': 'png', 'BMP': 'bmp'}[fmt] }"
        with Image.open(data_root / "test" / name) as image:
            image.convert("RGB").save(folder / new, format=fmt)
        names.append(new)
        truth[new] = name.split("-", 1)[1][:-4]
    return names, truth


def test_labels_tsv_folder_of_jpeg_and_gif_images(data_root, tmp_path):
    folder = tmp_path / "mine"
    names, truth = labelled_folder(data_root, folder)
    # predict.py's own output format (path with folders, text, confidence) is accepted as labels
    lines = [f"{folder / n}\t{truth[n]}\t0.9876" if i % 2 else f"{n}\t{truth[n]}" for i, n in enumerate(names)]
    (folder / "labels.tsv").write_text("# corrected reads\n" + "\n".join(lines) + "\n", encoding="utf-8")
    samples = list_samples(str(folder), DIGITS)
    assert [(os.path.basename(p), label) for p, label in samples] == [(n, truth[n]) for n in names]
    image, label = next(data(folder, batch_size=8).create_tuple_iterator(output_numpy=True))
    assert image.shape == (8, 3, 64, 160)
    assert [DIGITS.decode(r) for r in label] == [truth[n] for n in names]


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:-1], "1 image(s) of the folder are not listed (e.g. shot 03.bmp)"),
    (lambda lines: lines + ["ghost.png\t12"], "labels.tsv:5: ghost.png does not exist in"),
    (lambda lines: lines + [lines[0]], "labels.tsv:5: shot 00.jpg is listed twice (first on line 1)"),
    (lambda lines: [lines[0] + "\textra\tmore"] + lines[1:], "labels.tsv:1: expected file<TAB>label, got 4 field"),
    (lambda lines: ["shot 00.jpg\t12a4"] + lines[1:], "labels.tsv:1: label '12a4' holds 'a', which is not in "
                                                       "the alphabet '0123456789'"),
    (lambda lines: ["shot 00.jpg\t12345"] + lines[1:], "labels.tsv:1: label '12345' has 5 characters"),
])
def test_bad_labels_tsv_is_a_one_line_error(data_root, tmp_path, edit, message):
    folder = tmp_path / "mine"
    names, truth = labelled_folder(data_root, folder, count=4)
    (folder / "labels.tsv").write_text("\n".join(edit([f"{n}\t{truth[n]}" for n in names])) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        data(folder, batch_size=2)
    assert "\n" not in str(info.value) and str(folder / "labels.tsv") in str(info.value)


def test_labels_tsv_must_be_utf8(data_root, tmp_path):
    folder = tmp_path / "mine"
    names, truth = labelled_folder(data_root, folder, count=2)
    (folder / "labels.tsv").write_bytes(b"shot 00.jpg\t1\xff\n")
    with pytest.raises(ValueError, match="labels.tsv: not UTF-8 text"):
        data(folder, batch_size=2)


def test_other_alphabets_are_coded_by_the_spec(tmp_path):
    folder = tmp_path / "hex"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, label in enumerate(["F", "A0", "BEEF", "c"]):
        Image.fromarray(rng.integers(0, 255, (64, 160, 3), dtype=np.uint8)).save(folder / f"{i}-{label}.png")
    with pytest.raises(ValueError, match=r"3-c.png: label 'c' holds 'c', which is not in the alphabet "
                                         r"'0123456789ABCDEF'"):
        data(folder, charset=HEX.charset, batch_size=2)
    os.remove(folder / "3-c.png")
    _, label = next(data(folder, charset=HEX.charset, batch_size=3).create_tuple_iterator(output_numpy=True))
    assert label.tolist() == [[15, 16, 16, 16], [10, 0, 16, 16], [11, 14, 14, 15]]
    assert [HEX.decode(r) for r in label] == ["F", "A0", "BEEF"]


def test_per_image_normalisation_standardises_each_channel_of_each_image(data_root, tmp_path):
    dataset = data(data_root / "test", batch_size=8, normalization="per_image")
    image, _ = next(dataset.create_tuple_iterator(output_numpy=True))
    for index, name in enumerate(sorted(n for n in os.listdir(data_root / "test") if n.endswith(".png"))[:8]):
        with Image.open(data_root / "test" / name) as handle:
            bgr = np.asarray(handle.convert("RGB"), dtype=np.float64)[:, :, ::-1] / 255.0
        expected = (bgr - bgr.mean(axis=(0, 1))) / bgr.std(axis=(0, 1))
        np.testing.assert_allclose(image[index], expected.transpose(2, 0, 1), atol=1e-4)
    # Brightness and contrast a training set never had make no difference, unlike with the fixed statistics.
    folder = tmp_path / "shifted"
    folder.mkdir()
    first = sorted(n for n in os.listdir(data_root / "test") if n.endswith(".png"))[0]
    with Image.open(data_root / "test" / first) as handle:
        rgb = np.asarray(handle.convert("RGB"), dtype=np.float64)
    Image.fromarray(rgb.astype(np.uint8)).save(folder / "0-1.png")
    Image.fromarray((rgb * 0.5 + 40).astype(np.uint8)).save(folder / "1-1.png")
    Image.fromarray(np.full((64, 160, 3), 200, np.uint8)).save(folder / "2-1.png")      # one colour: zeros
    per_image = next(data(folder, batch_size=3, normalization="per_image").create_tuple_iterator(output_numpy=True))[0]
    fixed = next(data(folder, batch_size=3).create_tuple_iterator(output_numpy=True))[0]
    assert np.abs(per_image[0] - per_image[1]).max() < 0.1 < np.abs(fixed[0] - fixed[1]).max()
    assert not per_image[2].any()
