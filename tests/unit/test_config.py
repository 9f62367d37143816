"""src/config.py: defaults of the original, YAML and command-line overrides."""
import argparse
import os
import re

import pytest

from src.captcha_spec import CaptchaSpec
from src.config import Config, add_config_arguments, config_from_args
from src.data.render import RenderStyle
from conftest import REPO, run_py


def parse(argv):
    return config_from_args(add_config_arguments(argparse.ArgumentParser()).parse_args(argv))


def test_defaults_match_the_original_table():
    cfg = parse([])
    assert (cfg.max_captcha_digits, cfg.captcha_width, cfg.captcha_height) == (4, 160, 64)
    assert (cfg.batch_size, cfg.epoch_size, cfg.hidden_size) == (64, 30, 512)
    assert (cfg.learning_rate, cfg.momentum) == (0.01, 0.9)
    assert (cfg.save_checkpoint, cfg.save_checkpoint_steps, cfg.keep_checkpoint_max) == (True, 97, 30)
    assert cfg.save_checkpoint_path == "./checkpoint"


def test_yaml_then_command_line_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 8\nlearning_rate: 0.5\nsave_checkpoint: false\n")
    cfg = parse(["--config_path", str(path), "--batch_size", "4"])
    assert cfg.batch_size == 4 and cfg.learning_rate == 0.5 and cfg.save_checkpoint is False
    assert cfg.hidden_size == Config().hidden_size


@pytest.mark.parametrize("text, message", [
    ("batch_sise: 8\n", "unknown key"),
    ("batch_size: eight\n", "'batch_size' must be int"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("a: [\n", "invalid YAML"),
])
def test_bad_yaml_names_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        parse(["--config_path", str(path)])
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("batch_size: 8\nseed: 2\nbatch_size: 9\n", ":3: invalid YAML (key 'batch_size' is given twice, first on line 1)"),
    ("charset: ab\nfonts: {a: 1, a: 2}\n", ":2: invalid YAML (key 'a' is given twice, first on line 2)"),
    ("1: 2\nbatch_sise: 3\n", ": unknown key(s) 1 (int), batch_sise; known: charset, "),
    ("~: 1\nbatch_sise: 3\n", ": unknown key(s) None (NoneType), batch_sise; known: charset, "),
    ("seed: 2020-13-01\n", ": invalid YAML (month must be in 1..12)"),
])
def test_duplicate_and_non_name_yaml_keys_are_one_line_errors_naming_the_file(tmp_path, text, message):
    # PyYAML kept the last of two equal keys silently; sorted() failed on keys that are not strings.
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        parse(["--config_path", str(path)])
    assert str(err.value).startswith(f"config file {path}{message}") and "\n" not in str(err.value)


def test_a_config_that_is_not_utf8_is_named_and_a_yaml_merge_may_still_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"seed: 1\ncharset: \xff\n")
    with pytest.raises(ValueError) as err:
        parse(["--config_path", str(path)])
    assert str(err.value) == f"config file {path}: not UTF-8 text (byte 17)"
    path.write_text("<<: {seed: 1, batch_size: 8}\nseed: 2\n", encoding="utf-8")     # YAML's override idiom
    cfg = parse(["--config_path", str(path)])
    assert (cfg.seed, cfg.batch_size) == (2, 8)


def test_the_charset_help_states_the_alphabet_bound():
    from src.captcha_spec import MAX_CHARSET

    help_text = " ".join(add_config_arguments(argparse.ArgumentParser()).format_help().split())
    assert f"at most {MAX_CHARSET:,};" in help_text and MAX_CHARSET == 1000


def test_invalid_values_rejected():
    with pytest.raises(ValueError, match="--batch_size must be positive"):
        parse(["--batch_size", "0"])
    with pytest.raises(ValueError, match="not found"):
        parse(["--config_path", "/nonexistent/x.yaml"])


def test_recipe_options_are_validated():
    cfg = parse(["--optimizer", "adam", "--lr_schedule", "cosine", "--warmup_steps", "100"])
    assert (cfg.optimizer, cfg.lr_schedule, cfg.warmup_steps) == ("adam", "cosine", 100)
    assert (Config().optimizer, Config().lr_schedule, Config().warmup_steps) == ("sgd", "step", 0)
    with pytest.raises(ValueError, match="--optimizer must be one of sgd, adam, got 'rmsprop'"):
        parse(["--optimizer", "rmsprop"])
    with pytest.raises(ValueError, match="--lr_schedule must be one of step, cosine"):
        parse(["--lr_schedule", "linear"])
    assert Config().train_steps == 0 and parse(["--train_steps", "1700"]).train_steps == 1700
    with pytest.raises(ValueError, match="--train_steps must be >= 0, got -5"):
        parse(["--train_steps", "-5"])


SHIPPED = sorted(["original.yaml", "cpu_fast.yaml", "cpu_60min.yaml", "cpu_5ep.yaml", "cpu_finetune.yaml",
                  "alnum.yaml", "alnum_stream.yaml", "robust.yaml", "adapt.yaml", "crnn_digits.yaml", "crnn_alnum.yaml",
                  "crnn_robust.yaml", "adapt_alphabet.yaml", "crnn_universal.yaml"])


@pytest.mark.parametrize("name, expected", [
    ("original.yaml", dict(optimizer="sgd", learning_rate=0.01, lr_schedule="step", epoch_size=30, forget_bias=0.0)),
    ("cpu_fast.yaml", dict(optimizer="adam", learning_rate=0.001, lr_schedule="cosine", warmup_steps=100,
                           epoch_size=3, train_steps=0, forget_bias=0.0)),
    ("cpu_60min.yaml", dict(optimizer="adam", lr_schedule="cosine", epoch_size=3, train_steps=1780, forget_bias=1.0)),
    ("cpu_5ep.yaml", dict(optimizer="adam", learning_rate=0.001, lr_schedule="cosine", warmup_steps=100,
                          epoch_size=5, train_steps=0, forget_bias=1.0)),
    ("cpu_finetune.yaml", dict(optimizer="adam", learning_rate=0.0005, lr_schedule="cosine", warmup_steps=100,
                               epoch_size=2, train_steps=0)),
    ("alnum.yaml", dict(charset="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", max_captcha_digits=4, optimizer="adam",
                        learning_rate=0.001, lr_schedule="cosine", warmup_steps=100, train_steps=1600)),
    ("alnum_stream.yaml", dict(charset="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", synthetic_images=50000, seed=11,
                               optimizer="adam", learning_rate=0.001, lr_schedule="cosine", warmup_steps=100,
                               train_steps=6200, fresh_head=True)),
    ("robust.yaml", dict(charset="0123456789", synthetic_images=50000, normalization="per_image", optimizer="adam",
                         learning_rate=0.0005, lr_schedule="cosine", train_steps=1200, noise_curves=2,
                         char_rotation=30.0, image_rotation=5.0, image_shear=0.25, image_wave=4.0, image_blur=1.2,
                         color_jitter=0.4)),
    ("crnn_digits.yaml", dict(network="crnn", charset="0123456789", synthetic_images=50000, seed=11, optimizer="adam",
                              learning_rate=0.001, lr_schedule="cosine", warmup_steps=100, train_steps=5000,
                              crnn_channels="16,32,64,128", crnn_width_stride=4, crnn_bidirectional=True)),
    ("crnn_alnum.yaml", dict(network="crnn", charset="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", synthetic_images=50000,
                             seed=11, optimizer="adam", learning_rate=0.001, lr_schedule="cosine", warmup_steps=100,
                             train_steps=8000, fresh_head=True)),
    ("crnn_robust.yaml", dict(network="crnn", charset="0123456789", synthetic_images=50000, seed=11,
                              normalization="per_image", optimizer="adam", learning_rate=0.0005, lr_schedule="cosine",
                              train_steps=3000, fonts="captcha,dejavu-sans,dejavu-sans-mono", image_blur=1.2,
                              background_texture=0.5, strike_lines=2, image_noise=0.06, jpeg_quality=25)),
    ("crnn_universal.yaml", dict(network="crnn", charset="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                                 max_captcha_digits=8, captcha_width=256, captcha_height=64, resize="keep_aspect",
                                 normalization="per_image", synthetic_images=72000, optimizer="adam",
                                 learning_rate=0.0005, lr_schedule="cosine", warmup_steps=200, train_steps=6000,
                                 text_layout="varied", fonts="captcha,system,dejavu-sans,dejavu-sans-mono",
                                 image_scale=0.6)),
    ("adapt_alphabet.yaml", dict(normalization="per_image", synthetic_images=3000, augment_folder=True,
                                 optimizer="adam", learning_rate=0.001, lr_schedule="cosine", warmup_steps=100,
                                 train_steps=900, font_sizes="42,50,56", text_colors="10-200",
                                 background_colors="238-255", noise_curves=1, image_rotation=3.0, image_shear=0.15,
                                 image_wave=2.0, image_blur=0.6, color_jitter=0.3)),
    ("adapt.yaml", dict(charset="0123456789", normalization="per_image", synthetic_images=0, augment_folder=True,
                        optimizer="adam", learning_rate=0.0015, lr_schedule="cosine", warmup_steps=50,
                        train_steps=1000, batch_size=32, image_rotation=3.0, image_shear=0.15, image_wave=2.0,
                        image_blur=0.6, color_jitter=0.3)),
])
def test_shipped_configs_give_their_documented_recipe(name, expected):
    assert sorted(n for n in os.listdir(os.path.join(REPO, "configs"))
                  if n.endswith(".yaml")) == SHIPPED
    path = os.path.join(REPO, "configs", name)
    cfg = parse(["--config_path", path])
    assert {key: getattr(cfg, key) for key in expected} == expected
    # every recipe keeps the original clipping and hidden size, and all but adapt.yaml (chosen in
    # docs/adapting.md) the original batch
    assert (cfg.hidden_size, cfg.clip_global_norm) == (512, 10.0)
    assert cfg.batch_size == expected.get("batch_size", 64)


def test_yaml_numbers_that_pyyaml_reads_as_strings_are_accepted_like_the_command_line(tmp_path):
    # PyYAML reads 1e-3 (no dot) as the string '1e-3'; the command line has always taken it.
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-3\nforget_bias: -1E0\nbatch_size: '32'\n")
    cfg = parse(["--config_path", str(path)])
    assert (cfg.learning_rate, cfg.forget_bias, cfg.batch_size) == (0.001, -1.0, 32)
    assert parse(["--learning_rate", "1e-3"]).learning_rate == cfg.learning_rate


@pytest.mark.parametrize("text, message", [
    ("learning_rate: fast\n", "'learning_rate' must be a finite float, got 'fast'"),
    ("learning_rate: .nan\n", "'learning_rate' must be a finite float, got nan"),
    ("clip_global_norm: inf\n", "'clip_global_norm' must be a finite float, got 'inf'"),
    ("batch_size: 32.0\n", "'batch_size' must be int, got 32.0"),
    ("batch_size: '3e1'\n", "'batch_size' must be int, got '3e1'"),
])
def test_yaml_numbers_stay_strict_where_a_guess_is_not_safe(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        parse(["--config_path", str(path)])
    assert str(err.value) == f"config file {path}: {message}"


def test_command_line_refuses_non_finite_floats(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--learning_rate", "nan"])
    assert exit_info.value.code == 2
    assert "argument --learning_rate: expected a finite number, got 'nan'" in capsys.readouterr().err


def test_images_must_be_at_least_twice_as_wide_as_the_longest_label():
    # CTC emits one symbol per column and needs a blank between repeated characters.
    assert parse(["--captcha_width", "8"]).captcha_width == 8
    with pytest.raises(ValueError) as err:
        parse(["--captcha_width", "7"])
    assert str(err.value) == ("--captcha_width 7 gives the warpctc network 7 CTC steps (one per pixel column), too few for "
                              "--max_captcha_digits 4: CTC needs up to 2 per character (a blank between repeats), at "
                              "least 2 x 4 = 8")
    with pytest.raises(ValueError, match="--captcha_width 10 gives the warpctc network 10 CTC steps"):
        parse(["--captcha_width", "10", "--max_captcha_digits", "6"])
    # The rule is the network's: crnn emits width / stride steps.
    assert parse(["--network", "crnn", "--captcha_width", "32"]).captcha_width == 32
    with pytest.raises(ValueError, match=r"--captcha_width 31 gives the crnn network 7 CTC steps \(--captcha_width 31 "
                                         r"/ --crnn_width_stride 4\), too few for --max_captcha_digits 4"):
        parse(["--network", "crnn", "--captcha_width", "31"])


def test_the_alphabet_defaults_to_digits_and_keeps_the_original_coding():
    spec = CaptchaSpec.from_config(parse([]))
    assert (spec.charset, spec.num_classes, spec.blank) == ("0123456789", 11, 10)
    assert (spec.max_length, spec.width, spec.height) == (4, 160, 64)


def test_the_alphabet_comes_from_yaml_then_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("charset: 0123456789ABCDEF\nmax_captcha_digits: 6\n")
    spec = CaptchaSpec.from_config(parse(["--config_path", str(path)]))
    assert (spec.charset, spec.num_classes, spec.blank, spec.max_length) == ("0123456789ABCDEF", 17, 16, 6)
    mixed = CaptchaSpec.from_config(parse(["--config_path", str(path), "--charset", "aAbB"]))
    assert (mixed.charset, mixed.blank, mixed.max_length) == ("aAbB", 4, 6)
    assert mixed.decode(mixed.encode("Ab")) == "Ab"


@pytest.mark.parametrize("text, value", [("0123", "83"), ("12345", "12345"), ("yes", "True")])
def test_an_alphabet_yaml_reads_as_a_number_or_boolean_asks_for_quotes(tmp_path, text, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"charset: {text}\n")
    with pytest.raises(ValueError) as err:
        parse(["--config_path", str(path)])
    assert str(err.value) == (f"config file {path}: 'charset' must be a string, got {value}; quote it "
                              f'(charset: "...") so that YAML keeps it as text')
    path.write_text(f'charset: "{text}"\n')
    assert parse(["--config_path", str(path)]).charset == text


@pytest.mark.parametrize("argv, message", [
    (["--charset", ""], "--charset is empty: give the characters a captcha can hold, e.g. 0123456789"),
    (["--charset", "ABCA"], "--charset 'ABCA' repeats 'A': every character must appear once"),
    (["--charset", "AB C"], "--charset 'AB C' holds unprintable or blank character(s) [' ']"),
    (["--max_captcha_digits", "0"], "--max_captcha_digits must be positive, got 0"),
    (["--captcha_height", "-1"], "--captcha_height must be positive, got -1"),
])
def test_bad_captcha_fields_are_one_line_errors_naming_the_option(argv, message):
    with pytest.raises(ValueError) as err:
        parse(argv)
    assert str(err.value) == message


def test_a_script_can_offer_only_some_fields_and_still_read_a_full_config_file(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_steps", type=int, default=20, help="the script's own option, not the field")
    add_config_arguments(parser, ["charset", "seed"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch_size", "8"])          # not offered: usage error
    path = tmp_path / "c.yaml"
    path.write_text("charset: ABC\nbatch_size: 8\nseed: 4\n")
    args = parser.parse_args(["--config_path", str(path), "--seed", "5", "--train_steps", "2"])
    cfg = config_from_args(args)
    assert (cfg.charset, cfg.batch_size, cfg.seed) == ("ABC", 8, 5)
    assert args.train_steps == 2 and cfg.train_steps == Config().train_steps


def test_normalization_and_the_on_the_fly_options_default_to_the_original_data():
    cfg = parse([])
    assert (cfg.normalization, cfg.synthetic_images) == ("fixed", 0)
    assert RenderStyle.from_config(cfg) == RenderStyle()           # captcha's own drawing
    cfg = parse(["--normalization", "per_image", "--synthetic_images", "5000", "--fonts", "captcha,system",
                 "--font_sizes", "30,40", "--text_colors", "0-100", "--image_blur", "1.5", "--noise_dots", "0"])
    assert CaptchaSpec.from_config(cfg).normalization == "per_image" and cfg.synthetic_images == 5000
    style = RenderStyle.from_config(cfg)
    assert (style.fonts, style.font_sizes, style.text_colors, style.image_blur, style.noise_dots) == \
        (("captcha", "system"), (30, 40), (0, 100), 1.5, 0)


@pytest.mark.parametrize("argv, message", [
    (["--normalization", "zscore"], "--normalization must be one of fixed, per_image, got 'zscore'"),
    (["--synthetic_images", "-1"], "--synthetic_images must be >= 0, got -1"),
    (["--noise_curves", "-2"], "--noise_curves must be in [0, 20], got -2"),
    (["--background_colors", "dark"], "--background_colors must be LOW-HIGH with 0 <= LOW <= HIGH <= 255"),
    (["--fonts", " , "], "--fonts is empty"),
    (["--label_classes", "digits,lowercase"], "--label_classes 'digits,lowercase': 'lowercase' is not '+'-joined "
                                              "class names; the classes are digits, lower, upper, all"),
    (["--label_classes", "digits,,upper"], "--label_classes 'digits,,upper': '' is not '+'-joined class names"),
    (["--label_classes", "upper"], "--label_classes 'upper': 'upper' holds no character of the alphabet "
                                   "'0123456789'"),
])
def test_bad_normalization_and_style_values_are_one_line_errors(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse(argv)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("argv, message", [
    (["--network", "cnn"], "--network must be one of warpctc, crnn, got 'cnn'"),
    (["--network", "crnn", "--crnn_channels", "16,x"], "--crnn_channels must be 1 to 6 comma-separated widths in "
                                                       "1..1024, e.g. 32,64,128,192, got '16,x'"),
    (["--network", "crnn", "--crnn_width_stride", "3"], "--crnn_width_stride must be 1, 2, 4 or 8, with at most one "
                                                        "halving per stage of --crnn_channels (4 stages), got 3"),
    (["--network", "crnn", "--crnn_channels", "8,8", "--crnn_width_stride", "8"], "--crnn_width_stride must be 1, 2, "
                                                                                   "4 or 8, with at most one halving "
                                                                                   "per stage of --crnn_channels (2 "
                                                                                   "stages), got 8"),
    (["--network", "crnn", "--crnn_channels", "8,8,8,8,8", "--captcha_height", "16"],
     "--crnn_channels has 5 stages, each halving the height, too many for images 16 pixels high (--captcha_height)"),
    (["--network", "crnn", "--crnn_convs_per_stage", "5"], "--crnn_convs_per_stage must be in 1..4, got 5"),
    (["--network", "crnn", "--crnn_hidden_size", "0"], "--crnn_hidden_size must be in 1..4096, got 0"),
])
def test_bad_network_options_are_one_line_errors_naming_the_option(argv, message):
    with pytest.raises(ValueError) as err:
        parse(argv)
    assert str(err.value) == message


@pytest.mark.parametrize("script, offers, lacks", [
    ("predict.py", ["--checkpoint_path", "--read_charset", "--ignore_case", "--batch_size", "--max_pixels"],
     ["--learning_rate", "--epoch_size", "--char_rotation", "--max_connections"]),
    ("eval.py", ["--dataset_path", "--read_charset", "--batch_size", "--captcha_height"],
     ["--learning_rate", "--save_checkpoint_steps", "--fonts", "--port"]),
    ("export.py", ["--file_format", "--charset", "--network"], ["--optimizer", "--image_blur", "--max_bytes"]),
    ("serve.py", ["--label_dir", "--max_connections", "--header_timeout", "--read_charset"],
     ["--learning_rate", "--epoch_size", "--crnn_channels"]),
    ("train.py", ["--learning_rate", "--char_rotation", "--max_pixels"], ["--max_connections", "--port"]),
])
def test_each_entry_point_offers_only_the_options_it_uses(script, offers, lacks):
    proc = run_py([os.path.join(REPO, script), "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    options = set(re.findall(r"(--[a-z_]+)", proc.stdout))
    assert set(offers) <= options, sorted(set(offers) - options)
    assert not set(lacks) & options, sorted(set(lacks) & options)
