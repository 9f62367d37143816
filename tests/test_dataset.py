"""src/dataset.py: label coding, batches, sharding and every bad input."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from src.dataset import (BLANK, MEAN, STD, Progress, check_images, create_dataset, decode_label, encode_label,
                         list_image_files, list_samples, load_bgr, parse_label)


def labels_of(dataset):
    return [decode_label(row) for _, label in dataset.create_tuple_iterator(output_numpy=True) for row in label]


def test_parse_label_accepts_only_index_dash_digits():
    assert parse_label("00042-0731.png") == "0731"
    assert parse_label("/x/7-5.png") == "5"
    for bad in ("00042.png", "1-abc.png", "1-12345.png", "1-.png", "1-12.jpg"):
        with pytest.raises(ValueError, match=bad.split("/")[-1].replace(".", r"\.")):
            parse_label(bad)


def test_label_coding_round_trip_and_padding():
    assert encode_label("407").tolist() == [4, 0, 7, BLANK]
    assert encode_label("0000").tolist() == [0, 0, 0, 0]
    for text in ("0", "9", "10", "307", "9999", "0070"):
        coded = encode_label(text)
        assert coded.dtype == np.int32 and coded.shape == (4,)
        assert decode_label(coded) == text


def test_batch_shapes_dtypes_and_statistics(data_root):
    dataset = create_dataset(str(data_root / "train"), batch_size=16, shuffle=False)
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
    assert decode_label(label[0]) == parse_label(first)
    # Captchas are mostly light background: normalised values centre near 0.
    assert -1.5 < float(image.mean()) < 1.0


def test_every_label_once_per_epoch_and_seeded_shuffle(data_root):
    expected = sorted(label for _, label in list_samples(str(data_root / "train")))
    a = labels_of(create_dataset(str(data_root / "train"), batch_size=16, seed=5))
    b = labels_of(create_dataset(str(data_root / "train"), batch_size=16, seed=5))
    c = labels_of(create_dataset(str(data_root / "train"), batch_size=16, seed=6))
    assert sorted(a) == expected
    assert a == b and a != c


@pytest.mark.parametrize("shards", [2, 4])
def test_shards_are_disjoint_and_cover_the_data(data_root, shards):
    files = list_samples(str(data_root / "train"))
    seen = []
    for shard in range(shards):
        part = labels_of(create_dataset(str(data_root / "train"), batch_size=8, num_shards=shards, shard_id=shard))
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
        create_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no .png files"):
        create_dataset(str(tmp_path / "empty"))


def test_badly_named_png_is_an_error(data_root, tmp_path):
    folder = tmp_path / "d"
    names = copy_some(data_root / "train", folder, 20)
    os.rename(folder / names[3], folder / "0003-12345.png")
    with pytest.raises(ValueError, match="0003-12345.png: label '12345' is not 1 to 4 digits"):
        create_dataset(str(folder), batch_size=4)


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
        create_dataset(str(folder), batch_size=4)


def test_fewer_images_than_one_batch_per_shard(data_root, tmp_path):
    folder = tmp_path / "d"
    copy_some(data_root / "train", folder, 20)
    with pytest.raises(ValueError, match="20 images give 10 per shard .2 shard.s.., fewer than one batch of 16"):
        create_dataset(str(folder), batch_size=16, num_shards=2, shard_id=0)


def test_grayscale_rgba_and_other_sizes_are_converted(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 160), dtype=np.uint8), "L").save(folder / "0-1.png")
    Image.fromarray(rng.integers(0, 255, (64, 160, 4), dtype=np.uint8), "RGBA").save(folder / "1-22.png")
    Image.fromarray(rng.integers(0, 255, (50, 200, 3), dtype=np.uint8), "RGB").save(folder / "2-333.png")
    Image.fromarray(rng.integers(0, 255, (64, 160), dtype=np.uint8), "L").convert("P").save(folder / "3-4444.png")
    dataset = create_dataset(str(folder), batch_size=4, shuffle=False)
    image, label = next(dataset.create_tuple_iterator(output_numpy=True))
    assert image.shape == (4, 3, 64, 160)
    assert [decode_label(r) for r in label] == ["1", "22", "333", "4444"]
    # Grayscale becomes three equal channels (before per-channel normalisation).
    gray = image[0] * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None]
    np.testing.assert_allclose(gray[0], gray[1], atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="device_target must be one of Ascend, GPU, CPU, got 'TPU'"):
        create_dataset("x", device_target="TPU")
    with pytest.raises(ValueError, match="shard_id must be in"):
        create_dataset("x", num_shards=2, shard_id=2)


def test_image_folders_list_png_jpeg_gif_bmp_only(tmp_path):
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for name, kind in (("b.png", "PNG"), ("a.JPG", "JPEG"), ("c.jpeg", "JPEG"), ("d.gif", "GIF"), ("e.BMP", "BMP"),
                       ("f.webp", "WEBP")):
        Image.fromarray(pixels).save(tmp_path / name, format=kind)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "g.png").mkdir()                        # a folder is not an image file, whatever its name
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
