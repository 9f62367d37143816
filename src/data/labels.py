"""Labels: from file names (``<index>-<label>.<ext>`` or ``<label>.<ext>``) or a folder's ``labels.tsv``
(``file<TAB>label`` per line, UTF-8: the format predict.py prints, so corrected predictions become labels; a
folder being labelled by hand lists only its labelled images, see :func:`read_labels_tsv`), checked against a
:class:`CaptchaSpec`; and what a folder's labels and sizes say a fine-tuning should read."""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from src.captcha_spec import CaptchaSpec
from src.data.images import image_size, list_image_files, regular_file_problem

LABELS_FILE = "labels.tsv"

# The first line the labeller (src/serve/labelling.py) writes: with it, an image labels.tsv does not list is
# not labelled yet instead of an error.
LABELLING_HEADER = "# labelling: images not listed here are not labelled yet"

# "#unreadable<TAB>file": an image a person marked unreadable (to any other TSV reader, a comment).
UNREADABLE_MARK = "#unreadable"


def label_of_name(file_name: str) -> str:
    """The label a file name carries, unchecked: after the first ``-`` of ``<index>-<label>.<ext>``
    (what process_data.py writes), else the whole stem of ``<label>.<ext>`` (public captcha sets)."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    return stem.split("-", 1)[1] if "-" in stem else stem


def parse_label(file_name: str, spec: CaptchaSpec) -> str:
    """The label of ``<index>-<label>.<ext>`` or ``<label>.<ext>``; ValueError naming the file if invalid."""
    label = label_of_name(file_name)
    try:
        return spec.check_label(label, source=file_name)
    except ValueError as err:
        if "-" in os.path.basename(file_name):
            raise
        raise ValueError(f"{err}; the name is neither <label>.<ext> nor <index>-<label>.<ext>: rename the "
                         f"file, or list the folder's labels in {LABELS_FILE}") from None


def check_tsv_name(path: str) -> None:
    """ValueError naming ``path`` when its name cannot stand in a ``labels.tsv`` line: a tab or a line
    break (any that ``str.splitlines`` knows) would split the line, and the file is UTF-8."""
    if "\t" in path or len((path + ".").splitlines()) != 1:
        raise ValueError(f"{path!r}: a tab or line break in the name cannot be written to a {LABELS_FILE} line; "
                         f"rename it")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path!r}: the name is not UTF-8, so no {LABELS_FILE} line can hold it; rename it") from None


def _listed_name(folder: str, written: str) -> Optional[str]:
    """The name in ``folder`` of a file listed as ``written``, or None if there is no such entry.

    Leading ``/``-separated folders are dropped; backslashes separate folders only when the name
    with them is not in the folder (``a\\b.png`` may be a Linux file name or a Windows path).
    """
    name = written.rsplit("/", 1)[-1]
    for candidate in (name, name.rsplit("\\", 1)[-1]):
        if candidate and os.path.lexists(os.path.join(folder, candidate)):
            return candidate
    return None


class LabelsEntry(NamedTuple):
    """One image's line of ``labels.tsv``: its file name in the folder, its label (None: marked
    unreadable) and its line number (from 1)."""

    name: str
    label: Optional[str]
    number: int


class LabelsFile(NamedTuple):
    """A parsed ``labels.tsv``: its lines as written (line endings kept, UTF-8 BOM not), whether it
    started with a BOM, its entries by file name in file order, and whether it holds LABELLING_HEADER."""

    path: str
    lines: List[str]
    bom: bool
    entries: Dict[str, LabelsEntry]
    partial: bool


def listed_as(name: str) -> str:
    """How a file name of the folder is written in ``labels.tsv``: ``./#0.png`` for ``#0.png`` (a comment else)."""
    return f"./{name}" if name.startswith("#") else name


def parse_labels_text(folder: str, path: str, text: str, spec: CaptchaSpec,
                      missing: Optional[List[str]] = None) -> LabelsFile:
    """Parse the text of ``path``, the ``labels.tsv`` of ``folder`` (see :func:`read_labels_tsv`); every
    problem is a ValueError naming ``path`` and the line. Whether every image is listed is not checked.

    With a ``missing`` list, a line naming a file the folder no longer holds is no error: the line
    is kept (it is no entry) and its one-line description appended to ``missing``.
    """
    bom = text.startswith("\ufeff")
    lines = (text[1:] if bom else text).splitlines(keepends=True)
    entries: Dict[str, LabelsEntry] = {}
    partial = False
    for number, raw in enumerate(lines, 1):
        line = raw.splitlines()[0]
        partial = partial or line == LABELLING_HEADER
        if line.startswith(UNREADABLE_MARK + "\t"):
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected {UNREADABLE_MARK}<TAB>file, got {len(fields)} field(s): "
                                 f"{line[:80]!r}")
            written, label = fields[1], None
        elif not line.strip() or line.startswith("#"):
            continue
        else:
            fields = line.split("\t")
            if len(fields) not in (2, 3):
                raise ValueError(f"{path}:{number}: expected file<TAB>label, got {len(fields)} field(s): "
                                 f"{line[:80]!r}")
            written, label = fields[0], fields[1]
        name = _listed_name(folder, written)
        if name is None:
            problem = f"{path}:{number}: {written} does not exist in {folder}"
            if missing is None:
                raise ValueError(problem)
            missing.append(problem)
            continue
        first = entries.get(name)
        if first is not None:
            if (first.label is None) == (label is None):
                raise ValueError(f"{path}:{number}: {name} is listed twice (first on line {first.number})")
            here, there = ("marked unreadable", "labelled") if label is None else ("labelled", "marked unreadable")
            raise ValueError(f"{path}:{number}: {name} is {here} here and {there} on line {first.number}; "
                             "keep one of the two lines")
        problem = regular_file_problem(os.path.join(folder, name))
        if problem:
            raise ValueError(f"{path}:{number}: {problem}")
        if label is not None:
            spec.check_label(label, source=f"{path}:{number}")
        entries[name] = LabelsEntry(name, label, number)
    return LabelsFile(path, lines, bom, entries, partial)


def read_labels_file(folder: str, spec: CaptchaSpec, missing: Optional[List[str]] = None) -> LabelsFile:
    """Read and parse ``<folder>/labels.tsv`` (:func:`parse_labels_text`, ``missing`` as there); ValueError
    if it is not a regular UTF-8 file or a line is wrong."""
    path = os.path.join(folder, LABELS_FILE)
    problem = regular_file_problem(path, "a file of labels")
    if problem:
        raise ValueError(f"{problem}; move it away to label the images by their file names")
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_labels_text(folder, path, text, spec, missing)


# The left-out lines already printed: eval.py lists its folder twice, and says so once.
_REPORTED: Set[str] = set()


def read_labels_tsv(folder: str, spec: CaptchaSpec) -> List[Tuple[str, str]]:
    """``(path, label)`` for every labelled image of ``<folder>/labels.tsv``.

    A line is ``file<TAB>label`` (a third column, predict.py's confidence, is ignored). ``file``
    names an image in the folder; leading folders are dropped, so predict.py's output can be
    used as it is, also with Windows paths (a backslash separates folders unless the name with
    it is in the folder). Empty lines and lines starting with ``#`` are comments, so an image
    whose name starts with ``#`` is listed as ``./#0.png``; but ``#unreadable<TAB>file`` marks an
    image a person could not read, which is left out. A listed or unlisted image that is not a
    regular file (a broken symbolic link, a folder, ...) is an error. Every image of the folder
    must be listed, unless the file holds LABELLING_HEADER (it is being labelled, see
    src/serve/labelling.py): then the images it does not list are not labelled yet and left out. What
    is left out is said in one line on stderr.
    """
    labels = read_labels_file(folder, spec)
    path = labels.path
    if not labels.entries and not labels.partial:
        raise ValueError(f"{path}: lists no images")
    unlisted = [os.path.basename(p) for p in list_image_files(folder) if os.path.basename(p) not in labels.entries]
    if unlisted and not labels.partial:
        example = next((n for n in unlisted if n.startswith("#")), unlisted[0])
        hint = (f"; a line starting with '#' is a comment: list it as ./{example}" if example.startswith("#")
                else "; list every image or move it out")
        raise ValueError(f"{path}: {len(unlisted)} image(s) of the folder are not listed (e.g. {example}){hint}")
    samples = [(os.path.join(folder, e.name), e.label) for e in labels.entries.values() if e.label is not None]
    unreadable = len(labels.entries) - len(samples)
    left_out = " and ".join(part for count, part in ((len(unlisted), f"{len(unlisted)} not labelled yet"),
                                                     (unreadable, f"{unreadable} marked unreadable")) if count)
    if not samples:
        raise ValueError(f"{path}: lists no labelled images ({left_out}); label some first")
    if left_out:
        line = f"dataset: {path}: {len(samples)} labelled images; leaving out {left_out}"
        if line not in _REPORTED:
            _REPORTED.add(line)
            print(line, file=sys.stderr, flush=True)
    return samples


def list_samples(dataset_path: str, spec: CaptchaSpec) -> List[Tuple[str, str]]:
    """``(path, label)`` of every labelled image of a dataset folder (from ``labels.tsv`` or the file names)."""
    if os.path.lexists(os.path.join(dataset_path, LABELS_FILE)):
        return read_labels_tsv(dataset_path, spec)
    return [(path, parse_label(path, spec)) for path in list_image_files(dataset_path)]


def _raw_labels(folder: str) -> List[Tuple[str, str]]:
    """``(path, label)`` of a folder's labelled images, its labels.tsv or file names read as text, before any
    alphabet is known (:func:`list_samples` checks them once the alphabet is chosen)."""
    if not os.path.lexists(os.path.join(folder, LABELS_FILE)):
        return [(path, label_of_name(path)) for path in list_image_files(folder)]
    try:
        with open(os.path.join(folder, LABELS_FILE), encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []           # read_labels_tsv names the problem
    fields = [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]
    return [(os.path.join(folder, f[0]), f[1]) for f in fields if len(f) >= 2]


# A fine-tuned network reads images at most this many times as wide as its base's (CTC steps and memory grow
# with the width).
MAX_WIDTH_GROWTH = 4


def fit_spec_to_folder(folder: str, base: CaptchaSpec, given: Sequence[str]) -> Tuple[Dict[str, object], str]:
    """The spec fields a fine-tuning on ``folder`` should use, worked out from its labels and image sizes, and
    one line saying what was chosen.

    Of the fields the user did not set (``given``, by Config name): the alphabet is the labels' characters
    (in the base's order, new ones after it), the length the longest label's; with a ``keep_aspect`` base
    the width grows (up to MAX_WIDTH_GROWTH x the base's, in steps of 8) so that the widest image's aspect
    fits unshrunk. The height is always the base's, which the network's weights are made for.
    """
    samples = _raw_labels(folder)
    labels = [label for _, label in samples if label]
    if not labels:
        return {}, ""
    values: Dict[str, object] = {}
    notes = []
    used = {c for label in labels for c in label if c.isprintable() and not c.isspace()}
    if "charset" not in given and used:
        charset = "".join(c for c in base.charset if c in used) + "".join(sorted(used - set(base.charset)))
        values["charset"] = charset
        notes.append(f"alphabet {charset!r} ({len(charset)} characters, those of its labels)")
    if "max_captcha_digits" not in given:
        values["max_captcha_digits"] = max(len(label) for label in labels)
        notes.append(f"1-{values['max_captcha_digits']} characters (its longest label)")
    sizes = [size for size in (image_size(path) for path, _ in samples) if size and min(size) > 0]
    if sizes:
        (low_w, low_h), (high_w, high_h) = min(sizes), max(sizes)
        shown = f"{low_w}x{low_h}" if min(sizes) == max(sizes) else f"{low_w}x{low_h} to {high_w}x{high_h}"
        width = base.width
        if base.resize == "keep_aspect" and "captcha_width" not in given:
            aspect = max(w / h for w, h in sizes)
            needed = math.ceil(base.input_height * aspect / 8) * 8
            width = min(max(base.width, needed), MAX_WIDTH_GROWTH * base.width)
            values["captcha_width"] = width
        elif "captcha_width" in given:
            width = None
        how = "fitted with the aspect kept" if base.resize == "keep_aspect" else "stretched"
        notes.append(f"images {shown}, {how} into " + (f"{width}x{base.input_height}" if width else "--captcha_width"))
    override = "--charset, --max_captcha_digits and --captcha_width override"
    return values, f"fine-tuning to {folder}: " + "; ".join(notes) + f" ({override})"
