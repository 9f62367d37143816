"""The captcha spec: alphabet checks, label coding and greedy CTC decoding for several alphabets."""
import itertools
import json
import os
import string
import time

import numpy as np
import pytest

import process_data
from src.captcha_spec import MAX_CHARSET, SPEC_KEY, CaptchaSpec
from src.decode import ctc_log_likelihood, decode_with_confidence, greedy_decode
from conftest import REPO, last_error_line, run_py

ALNUM = string.digits + string.ascii_uppercase
MIXED = string.digits + string.ascii_uppercase + string.ascii_lowercase
DIGITS = string.digits


def one_hot_path(spec, path):
    """Logits (T, 1, C) whose argmax is ``path`` (class indices), confident at every step."""
    logits = np.full((len(path), 1, spec.num_classes), -10.0, np.float32)
    for t, c in enumerate(path):
        logits[t, 0, c] = 10.0
    return logits


def test_digits_default_keeps_the_original_coding():
    spec = CaptchaSpec()
    assert (spec.num_classes, spec.blank, spec.input_height) == (11, 10, 64)
    np.testing.assert_array_equal(spec.encode("407"), [4, 0, 7, 10])
    assert spec.encode("407").dtype == np.int32
    assert spec.decode([4, 0, 7, 10]) == "407"


@pytest.mark.parametrize("charset", [string.digits, ALNUM, MIXED])
def test_round_trips_for_every_alphabet(charset):
    spec = CaptchaSpec(charset=charset, max_length=6)
    blank = spec.blank
    assert blank == len(charset) and spec.num_classes == len(charset) + 1
    rng = np.random.default_rng(len(charset))
    for _ in range(50):
        label = "".join(rng.choice(list(charset), size=rng.integers(1, 7)))
        coded = spec.encode(label)
        assert spec.decode(coded) == label
        # A CTC path: each character held for 1-3 steps, blanks between and around, and a blank
        # wherever two equal characters meet (otherwise CTC would merge them).
        path = [blank]
        for i, c in enumerate(coded[coded != blank]):
            if i and path[-1] == c:
                path.append(blank)
            path += [int(c)] * int(rng.integers(1, 4))
            if rng.random() < 0.5:
                path.append(blank)
        assert greedy_decode(spec, one_hot_path(spec, path)) == [label]


def test_case_matters_in_a_mixed_alphabet():
    spec = CaptchaSpec(charset=MIXED)
    assert spec.decode(spec.encode("aA")) == "aA"
    assert spec.encode("a")[0] != spec.encode("A")[0]
    with pytest.raises(ValueError, match="'a', which is not in the alphabet"):
        CaptchaSpec(charset=ALNUM).encode("a", source="x.png")


def test_ignore_case_reads_and_compares_in_lower_case_and_is_stored_only_when_set():
    spec = CaptchaSpec(charset=MIXED, ignore_case=True)
    assert spec.decode(spec.encode("aAbB")) == "aabb"
    logits = 10 * np.eye(spec.num_classes)[[spec.charset.index("A"), spec.blank, spec.charset.index("b")]]
    assert greedy_decode(spec, logits[:, None, :]) == ["ab"]
    assert CaptchaSpec.from_json(spec.to_json()) == spec
    assert "ignore_case" not in json.loads(CaptchaSpec(charset=MIXED).to_json())   # as written before it existed
    assert "case ignored" in spec.describe()


def test_predict_and_eval_may_ignore_case_on_any_checkpoint(tmp_path):
    # crnn_alnum reads capitals; told to ignore case, the same reads come out in lower case and
    # eval compares folded texts, so its accuracy is unchanged.
    images = tmp_path / "images"
    process_data.render_split(str(images), 6, progress=False,
                              spec=CaptchaSpec(charset=ALNUM))
    ckpt = os.path.join(REPO, "pretrained", "crnn_alnum.ckpt")
    plain = run_py([os.path.join(REPO, "predict.py"), "--checkpoint_path", ckpt, "--quiet", images])
    folded = run_py([os.path.join(REPO, "predict.py"), "--checkpoint_path", ckpt, "--quiet", "--ignore_case", "true",
                     images])
    assert plain.returncode == folded.returncode == 0, folded.stderr
    texts = [line.split("\t")[1] for line in plain.stdout.splitlines()]
    assert any(t != t.lower() for t in texts)
    assert [line.split("\t")[1] for line in folded.stdout.splitlines()] == [t.lower() for t in texts]
    results = [run_py([os.path.join(REPO, "eval.py"), "--checkpoint_path", ckpt, "--dataset_path", images, "--quiet"]
                      + extra).stdout for extra in ([], ["--ignore_case", "true"])]
    assert [r.splitlines()[0] for r in results][0] == [r.splitlines()[0] for r in results][1]
    assert "result: {'WarpCTCAccuracy'" in results[1]


def test_read_charset_reads_only_its_characters_with_their_renormalised_probability():
    # Step scores where "O" beats "0" and "A" beats "4": told the captcha holds digits, the reader
    # takes the best digit at each step, and the text's probability is over digits and blank alone.
    spec = CaptchaSpec(charset=MIXED, read_charset=DIGITS)
    rows = np.full((3, spec.num_classes), -5.0)
    for step, (first, second) in enumerate([("O", "0"), (None, None), ("A", "4")]):
        if first is None:
            rows[step, spec.blank] = 5.0
        else:
            rows[step, spec.charset.index(first)], rows[step, spec.charset.index(second)] = 5.0, 4.0
    logits = rows[:, None, :]
    assert greedy_decode(CaptchaSpec(charset=MIXED), logits) == ["OA"]
    [(text, confidence)] = decode_with_confidence(spec, logits)
    kept = [spec.charset.index(c) for c in DIGITS] + [spec.blank]
    only = decode_with_confidence(CaptchaSpec(charset=DIGITS), rows[:, kept][:, None, :])
    assert text == "04" and confidence == pytest.approx(only[0][1])
    assert CaptchaSpec.from_json(spec.to_json()) == spec
    assert "read_charset" not in json.loads(CaptchaSpec(charset=MIXED).to_json())
    assert "reading only '0123456789'" in spec.describe()
    with pytest.raises(ValueError, match=r"--read_charset '0a#' holds '#', which the model's alphabet"):
        CaptchaSpec(charset=MIXED, read_charset="0a#")


CLASSES = "digits,lower,upper,lower+digits,upper+digits,all"


def scored_steps(spec, steps):
    """Logits (T, 1, C): each step a blank, or ``(first, second)``: two characters scored 5 and 4.6."""
    rows = np.full((len(steps), spec.num_classes), -5.0)
    for step, pair in enumerate(steps):
        if pair is None:
            rows[step, spec.blank] = 5.0
        else:
            rows[step, spec.charset.index(pair[0])] = 5.0
            rows[step, spec.charset.index(pair[1])] = 4.6
    return rows[:, None, :]


def test_read_classes_takes_a_glyphs_class_from_its_neighbours():
    plain, spec = CaptchaSpec(charset=MIXED, max_length=8), CaptchaSpec(charset=MIXED, max_length=8,
                                                                       read_classes=CLASSES)
    # "O" a little likelier than "0" among digits, "X" than "x" among lower case: one class each is read.
    digits = scored_steps(spec, [("1", "l"), None, ("O", "0"), None, ("7", "T")])
    lower = scored_steps(spec, [("a", "4"), None, ("X", "x"), None, ("e", "E"), None, ("g", "9")])
    # Where no pool explains the glyphs (each far likelier than anything else), mixed case stays mixed.
    mixed = one_hot_path(spec, [spec.charset.index(c) for c in "aB3"])
    steps = 7
    logits = np.full((steps, 3, spec.num_classes), -10.0)
    logits[:, :, spec.blank] = 10.0                              # each sample's steps after its own: blanks
    for b, sample in enumerate((digits, lower, mixed)):
        logits[:len(sample), b] = sample[:, 0]
    assert greedy_decode(plain, logits) == ["1O7", "aXeg", "aB3"]
    results = decode_with_confidence(spec, logits)
    assert [text for text, _ in results] == ["107", "axeg", "aB3"]
    # The confidence is the text's probability under the prior: above the model's own for the digits it
    # lifted, as the model's for a read no pool changes.
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    own = [float(np.exp(ctc_log_likelihood(log_probs[:, b:b + 1], [[spec.charset.index(c) for c in text]],
                                           spec.blank)[0])) for b, (text, _) in enumerate(results)]
    confidences = [confidence for _, confidence in results]
    assert all(0.0 <= c <= 1.0 for c in confidences), confidences
    assert confidences[0] > own[0] and confidences[1] > own[1], (confidences, own)
    assert confidences[2] == pytest.approx(own[2], abs=1e-4)
    assert CaptchaSpec.from_json(spec.to_json()) == spec
    assert "read_classes" not in json.loads(plain.to_json())
    assert f"reading texts of one of {CLASSES!r}" in spec.describe()


def test_read_classes_within_a_read_charset_and_its_errors():
    # Told the captcha holds digits, the lower- and upper-case pools are empty and the read is the digits'.
    spec = CaptchaSpec(charset=MIXED, read_charset=DIGITS, read_classes=CLASSES)
    logits = scored_steps(spec, [("O", "0"), None, ("A", "4")])
    assert decode_with_confidence(spec, logits) == decode_with_confidence(
        CaptchaSpec(charset=MIXED, read_charset=DIGITS), logits)
    with pytest.raises(ValueError, match=r"--read_classes 'upper' holds no character the model reads"):
        CaptchaSpec(charset=MIXED, read_charset=DIGITS, read_classes="upper")
    with pytest.raises(ValueError, match=r"--read_classes 'digits,greek': 'greek' is not '\+'-joined class names; "
                                         r"the classes are digits, lower, upper, all"):
        CaptchaSpec(charset=MIXED, read_classes="digits,greek")


def test_predict_reads_only_the_read_charset_from_the_universal_base(tmp_path):
    # The universal base reads 62 characters; told the captchas are digits, predict.py outputs digits
    # only, and an alphabet the model does not know is one line naming the option.
    images = tmp_path / "images"
    process_data.render_split(str(images), 8, progress=False)
    ckpt = os.path.join(REPO, "pretrained", "crnn_universal.ckpt")
    proc = run_py([os.path.join(REPO, "predict.py"), "--checkpoint_path", ckpt, "--quiet", "--read_charset", DIGITS,
                   images])
    assert proc.returncode == 0, proc.stderr[-2000:]
    texts = [line.split("\t")[1] for line in proc.stdout.splitlines()]
    assert len(texts) == 8 and all(text and set(text) <= set(DIGITS) for text in texts), texts
    proc = run_py([os.path.join(REPO, "predict.py"), "--checkpoint_path", ckpt, "--read_charset", "0123€", images])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("predict.py: error:")
    assert "--read_charset '0123€' holds '€'" in proc.stderr, proc.stderr[-2000:]
    proc = run_py([os.path.join(REPO, "predict.py"), "--checkpoint_path", ckpt, "--read_classes", "digits,greek",
                   images])
    assert proc.returncode == 2
    assert last_error_line(proc) == ("predict.py: error: --read_classes 'digits,greek': 'greek' is not '+'-joined "
                                     "class names; the classes are digits, lower, upper, all"), proc.stderr[-2000:]


def brute_force_probability(probs, text_classes, blank):
    """P(text) by enumerating every path of the (T, C) probabilities and collapsing it."""
    total = 0.0
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or path[i - 1] != c)]
        if collapsed == list(text_classes):
            total += float(np.prod([probs[t, c] for t, c in enumerate(path)]))
    return total


@pytest.mark.parametrize("probs, text", [
    ([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]], "ab"),
    ([[0.5, 0.1, 0.4], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], "aa"),
    ([[0.2, 0.2, 0.6], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7]], ""),
    ([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1]], "a"),
])
def test_confidence_is_the_probability_of_the_decoded_text(probs, text):
    spec = CaptchaSpec(charset="ab", max_length=2, width=4)
    probs = np.array(probs)
    ((decoded, confidence),) = decode_with_confidence(spec, np.log(probs)[:, None, :] + 3.0)
    assert decoded == text
    expected = brute_force_probability(probs, [spec.charset.index(c) for c in text], spec.blank)
    assert confidence == pytest.approx(expected, rel=1e-9)
    best_path = float(np.prod(probs.max(axis=1)))
    assert best_path <= confidence + 1e-12 <= 1.0 + 1e-12


def test_confidence_is_batched_per_sample():
    spec = CaptchaSpec(charset="ab", max_length=2, width=4)
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 6, 3)) * 3
    together = decode_with_confidence(spec, logits)
    alone = [decode_with_confidence(spec, logits[:, i:i + 1])[0] for i in range(6)]
    assert [t for t, _ in together] == [t for t, _ in alone]
    np.testing.assert_allclose([c for _, c in together], [c for _, c in alone], rtol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(charset=""), "--charset is empty"),
    (dict(charset="0123456789A1"), "repeats '1'"),
    (dict(charset="ab\tc"), "unprintable or blank"),
    (dict(charset="ab c"), "unprintable or blank"),
    (dict(max_length=0), "--max_captcha_digits must be positive"),
])
def test_bad_specs_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        CaptchaSpec(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("label, message", [
    ("", "has 0 characters, expected 1 to 4"),
    ("12345", "has 5 characters, expected 1 to 4"),
    ("12x", "holds 'x', which is not in the alphabet '0123456789'"),
])
def test_bad_labels_name_the_source(label, message):
    with pytest.raises(ValueError, match=message) as info:
        CaptchaSpec().encode(label, source="data/0001-x.png")
    assert str(info.value).startswith("data/0001-x.png: ")


def test_json_round_trip_and_damage():
    spec = CaptchaSpec(charset=MIXED, max_length=6, width=200, height=70)
    assert CaptchaSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="ckpt: damaged captcha spec"):
        CaptchaSpec.from_json('{"charset": "ab"}', source="ckpt")


def test_normalization_round_trips_and_a_spec_written_before_it_reads_fixed():
    spec = CaptchaSpec(charset=ALNUM, normalization="per_image")
    assert CaptchaSpec.from_json(spec.to_json()) == spec
    assert CaptchaSpec.from_json(CaptchaSpec().to_json()).normalization == "fixed"
    # What checkpoints saved before the option existed hold, e.g. the alphanumeric release's record.
    older = '{"charset": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", "height": 64, "max_length": 4, "width": 160}'
    assert CaptchaSpec.from_json(older) == CaptchaSpec(charset=ALNUM, normalization="fixed")
    assert spec.describe() == f"1-4 of {ALNUM!r}, 160x64, per_image normalisation"
    with pytest.raises(ValueError, match="--normalization must be one of fixed, per_image, got 'zscore'"):
        CaptchaSpec(normalization="zscore")
    with pytest.raises(ValueError, match="ckpt: damaged captcha spec"):
        CaptchaSpec.from_json('{"charset": "ab", "max_length": 4, "width": 160, "height": 64, '
                              '"normalization": "zscore"}', source="ckpt")


@pytest.mark.parametrize("field, value, message", [
    ("width", 160.0, "'width' must be int, got 160.0 (float)"),
    ("height", True, "'height' must be int, got True (bool)"),
    ("max_length", "4", "'max_length' must be int, got '4' (str)"),
    ("charset", ["0", "1"], "'charset' must be str, got ['0', '1'] (list)"),
    ("normalization", None, "'normalization' must be str, got None (NoneType)"),
])
def test_every_field_of_a_spec_has_its_type_checked_however_it_is_built(field, value, message):
    with pytest.raises(ValueError) as info:
        CaptchaSpec(**{field: value})
    assert str(info.value) == message
    stored = json.loads(CaptchaSpec().to_json())
    with pytest.raises(ValueError) as info:
        CaptchaSpec.from_json(json.dumps({**stored, field: value}), source="checkpoint x.ckpt")
    assert str(info.value) == f"checkpoint x.ckpt: damaged captcha spec ({message})"


def test_a_checkpoint_whose_spec_has_a_float_width_is_one_line_from_predict(tmp_path):
    # The red team's case: the spec passed from_json and predict died later with a TypeError.
    import mindspore as ms

    params = ms.load_checkpoint(os.path.join(REPO, "pretrained", "warpctc_alnum.ckpt"))
    spec = {**json.loads(params[SPEC_KEY]), "width": 160.0}
    ms.save_checkpoint([{"name": name, "data": value} for name, value in params.items()
                        if isinstance(value, ms.Parameter)], str(tmp_path / "bad.ckpt"),
                       append_dict={SPEC_KEY: json.dumps(spec)})
    process_data.render_split(str(tmp_path / "images"), 2, progress=False)
    proc = run_py([os.path.join(REPO, "predict.py"), "--checkpoint_path", tmp_path / "bad.ckpt", tmp_path / "images"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"predict.py: error: checkpoint {tmp_path / 'bad.ckpt'}: damaged "
                                                    "captcha spec ('width' must be int, got 160.0 (float))")
    assert proc.stdout == ""


def test_the_alphabet_is_bounded_and_a_huge_one_is_refused_at_once(tmp_path):
    largest = "".join(chr(0x4E00 + i) for i in range(MAX_CHARSET))
    assert CaptchaSpec(charset=largest).num_classes == MAX_CHARSET + 1
    with pytest.raises(ValueError) as info:
        CaptchaSpec(charset=largest + "A")
    assert str(info.value) == (f"--charset has {MAX_CHARSET + 1} characters, more than the {MAX_CHARSET} allowed (one "
                               f"network class each); it starts {largest[:20]!r}")
    with pytest.raises(ValueError, match="repeats 'ab': every character must appear once"):
        CaptchaSpec(charset="ab" + largest[:MAX_CHARSET - 4] + "ab")
    # The red team's case: a file pasted into the charset (here 1 MB; the repeat check used to take
    # a pass over the alphabet per character, hours for this).
    config = tmp_path / "pasted.yaml"
    config.write_text('charset: "' + "0123456789" * 100_000 + '"\n', encoding="utf-8")
    start = time.perf_counter()
    proc = run_py([os.path.join(REPO, "process_data.py"), "--config_path", config, "--output_dir", tmp_path / "data"],
                  timeout=60)
    assert time.perf_counter() - start < 30
    assert proc.returncode == 2
    assert proc.stderr == (f"process_data.py: error: --charset has 1000000 characters, more than the {MAX_CHARSET} "
                           "allowed (one network class each); it starts '01234567890123456789'\n")
    assert not (tmp_path / "data").exists()
