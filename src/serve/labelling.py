"""The state behind labelling a folder of captchas by hand, one image at a time (serve.py's label page).

:class:`LabelStore` keeps ``FOLDER/labels.tsv`` in the labelling format of src/dataset.py:
LABELLING_HEADER at the top (images not listed are not labelled yet), ``file<TAB>label`` lines
and ``#unreadable<TAB>file`` lines. Every save rewrites the whole file atomically (a temporary
file, fsync, rename, fsync of the folder), so the file on disk is always either the one before
or the one after a save, and a save that returned survives a crash. Lines it does not change,
comments included, are kept as they were written. A save checks only its own line and updates
the parsed file in place, so it costs a write of the file (milliseconds for 50,000 lines), not a
new parse. Pure Python: no HTTP, no MindSpore.
"""
from __future__ import annotations

import math
import os
import secrets
import stat
import sys
import threading
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from src.captcha_spec import CaptchaSpec
from src.data.images import list_image_files, regular_file_problem
from src.data.labels import (LABELLING_HEADER, LABELS_FILE, UNREADABLE_MARK, LabelsEntry, LabelsFile, check_tsv_name,
                             listed_as, read_labels_file)


def _line_end(line: str) -> str:
    """The line break ``line`` ends with ("" for a last line without one)."""
    return line[len(line.splitlines()[0]):]


class LabelStore:
    """The labels of one folder's images, read from and saved to its ``labels.tsv``; thread-safe.

    ``labels.tsv`` may be absent, a complete one (as train.py reads), predict.py's output (its
    reads count as labels) or one this class wrote. The file on disk is the truth: when another
    writer changed it, every call reads it again first. A line naming an image that was moved
    away is kept as written and reported once through ``report`` (its label is not lost, and
    saves of the other images go on); :meth:`missing` lists those lines.
    """

    def __init__(self, folder: str, spec: CaptchaSpec,
                 report: Optional[Callable[[str], None]] = None) -> None:
        """Lists ``folder``'s images and reads its ``labels.tsv``; ValueError, one line naming the
        file (and line), for a folder without images, an image name no ``labels.tsv`` line can
        hold, or a damaged ``labels.tsv``. ``report`` receives each new problem line (default: stderr)."""
        self.folder = folder
        self.spec = spec
        self.path = os.path.join(folder, LABELS_FILE)
        self._report = report or (lambda line: print(f"labelling: {line}", file=sys.stderr, flush=True))
        self._reported: Set[str] = set()
        self._missing: List[str] = []
        self._lock = threading.Lock()
        self._images = [os.path.basename(p) for p in list_image_files(folder)]
        for name in self._images:
            check_tsv_name(os.path.join(folder, name))
        self._image_set = set(self._images)
        self._readings: Dict[str, Tuple[str, float]] = {}
        self._order = list(self._images)
        self._order_stale = False
        self._readings_done = threading.Event()
        self._load()

    # -- reading -----------------------------------------------------------------------------------
    def _signature(self) -> Optional[tuple]:
        """What identifies the version of labels.tsv on disk (None: there is none); a rename onto it
        changes the inode."""
        if not os.path.lexists(self.path):
            return None
        try:
            info = os.stat(self.path)
        except OSError:
            return ("unreadable",)      # read_labels_file says why
        return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns

    def _load(self) -> None:
        # The signature is taken before reading: a change in between is then seen by the next call.
        signature = self._signature()
        missing: List[str] = []
        if signature is None:
            labels = LabelsFile(self.path, [], False, {}, False)
        else:
            labels = read_labels_file(self.folder, self.spec, missing)
        self._adopt(labels, signature, missing)

    def _adopt(self, labels: LabelsFile, signature: Optional[tuple], missing: List[str]) -> None:
        self._report_new(missing)
        self._missing = missing
        self._file = labels
        self._signature_seen = signature
        self._labels: Dict[str, str] = {}
        self._unreadable: Set[str] = set()
        for entry in labels.entries.values():
            if entry.name not in self._image_set:
                continue                # a listed file of another extension is none of the folder's images
            if entry.label is None:
                self._unreadable.add(entry.name)
            else:
                self._labels[entry.name] = entry.label

    def _refresh(self) -> None:
        if self._signature() != self._signature_seen:
            self._load()

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or name not in self._image_set:
            hint = (" (give a file name of the folder, not a path)"
                    if isinstance(name, str) and ("/" in name or name in (".", "..")) else "")
            raise ValueError(f"{name!r}: not an image of {self.folder}{hint}")

    def _counts(self) -> dict:
        return {"labelled": len(self._labels), "unreadable": len(self._unreadable), "total": len(self._images)}

    # -- the public state ----------------------------------------------------------------------------
    def set_readings(self, readings: Mapping[str, Tuple[str, float]]) -> None:
        """The model's ``(text, confidence)`` per file name, replacing any before. :meth:`next` then offers
        the least confident reading first (ties by name), the images without a reading last, by name."""
        checked = self._checked_readings(readings)
        with self._lock:
            self._readings = checked
            self._order_stale = True
        self.finish_readings()

    def add_readings(self, readings: Mapping[str, Tuple[str, float]]) -> None:
        """More readings, as :meth:`set_readings` takes them, added to those already there: serve.py
        reads a large folder in the background and adds each batch as it comes."""
        checked = self._checked_readings(readings)
        with self._lock:
            self._readings.update(checked)
            self._order_stale = True

    def reading_count(self) -> int:
        """How many images have a reading so far."""
        with self._lock:
            return len(self._readings)

    def finish_readings(self) -> None:
        """Say that no more readings will come (:meth:`readings_done`)."""
        self._readings_done.set()

    def readings_done(self) -> bool:
        """Whether the model has read every image it will read (set by :meth:`finish_readings`)."""
        return self._readings_done.is_set()

    def _checked_readings(self, readings: Mapping[str, Tuple[str, float]]) -> Dict[str, Tuple[str, float]]:
        checked: Dict[str, Tuple[str, float]] = {}
        for name, reading in readings.items():
            self._check_name(name)
            try:
                text, confidence = reading
                confidence = float(confidence)
            except (TypeError, ValueError):
                raise ValueError(f"reading of {name}: expected (text, confidence), got {reading!r:.80}") from None
            if not isinstance(text, str) or not math.isfinite(confidence):
                raise ValueError(f"reading of {name}: expected (text, confidence), got {reading!r:.80}")
            checked[name] = (text, confidence)
        return checked

    def _current_order(self) -> List[str]:
        # Sorted once per change of the readings, when asked for, not once per batch added.
        if self._order_stale:
            readings = self._readings
            order = sorted(readings, key=lambda n: (readings[n][1], n))
            self._order = order + [n for n in self._images if n not in readings]
            self._order_stale = False
        return self._order

    def next(self) -> Optional[dict]:
        """The next image to label (neither labelled nor marked unreadable), in the order of
        :meth:`set_readings`, with its reading and the counts; None when every image is done."""
        with self._lock:
            self._refresh()
            for name in self._current_order():
                if name not in self._labels and name not in self._unreadable:
                    text, confidence = self._readings.get(name, (None, None))
                    return {"file": name, "reading": text, "confidence": confidence, **self._counts()}
            return None

    def pending(self) -> List[str]:
        """The images neither labelled nor marked unreadable, by name (the ones a model should read)."""
        with self._lock:
            self._refresh()
            return [n for n in self._images if n not in self._labels and n not in self._unreadable]

    def item(self, name: str) -> dict:
        """One image's state: its label (None if none), whether it is marked unreadable, the model's
        reading; ValueError for a name that is not one of the folder's images."""
        with self._lock:
            self._check_name(name)
            self._refresh()
            text, confidence = self._readings.get(name, (None, None))
            return {"file": name, "label": self._labels.get(name), "unreadable": name in self._unreadable,
                    "reading": text, "confidence": confidence}

    def image_bytes(self, name: str) -> bytes:
        """The bytes of image ``name``, a regular file of the folder itself; ValueError as :meth:`item`,
        and "not an image of" for a name that is a symbolic link, not a regular file, or gone.

        Opened without following links and checked on the open file, so a link swapped in at any
        moment cannot make the server read outside the folder.
        """
        self._check_name(name)
        try:
            fd = os.open(os.path.join(self.folder, name), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except OSError as err:
            raise ValueError(f"{name}: not an image of {self.folder} ({err.strerror})") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{name}: not an image of {self.folder} (not a regular file)")
            return handle.read()

    def missing(self) -> List[str]:
        """The lines of labels.tsv naming a file the folder no longer holds (``labels.tsv:N: ... does not exist``),
        those found when it was read and those moved away since; each new one is reported once."""
        with self._lock:
            self._refresh()
            gone = [f"{self.path}:{entry.number}: {listed_as(entry.name)} does not exist in {self.folder}"
                    for entry in self._file.entries.values()
                    if not os.path.lexists(os.path.join(self.folder, entry.name))]
            self._report_new(gone)
            return self._missing + gone

    def _report_new(self, lines: List[str]) -> None:
        for line in lines:
            if line not in self._reported:
                self._reported.add(line)
                self._report(f"{line}; its line is kept, the other images are labelled as usual")

    def counts(self) -> dict:
        """``{"labelled": n, "unreadable": u, "total": N}`` over the folder's images."""
        with self._lock:
            self._refresh()
            return self._counts()

    # -- saving --------------------------------------------------------------------------------------
    def save(self, name: str, label: Optional[str] = None, unreadable: bool = False) -> dict:
        """Save ``label`` for image ``name``, or mark it unreadable (exactly one of the two), replacing
        its line if it has one; on disk before this returns. A bad name or label (outside the
        alphabet, too long, empty) is a ValueError with the reason, and nothing is written."""
        with self._lock:
            self._check_name(name)
            if (label is None) != bool(unreadable):
                raise ValueError(f"save {name}: give either a label or unreadable=True"
                                 + (", not both" if unreadable else ""))
            if label is not None:
                self.spec.check_label(label, source=name)
            problem = regular_file_problem(os.path.join(self.folder, name))
            if problem:
                raise ValueError(f"save {name}: {problem}")
            self._refresh()
            lines = list(self._file.lines)
            entries = dict(self._file.entries)
            newline = _line_end(lines[0]) if lines and _line_end(lines[0]) else "\n"
            # The line says just what parse_labels_text reads back: a name check_tsv_name accepted at the
            # start, written as listed_as writes it, and a label the spec accepted (no tab, no line break).
            text = f"{UNREADABLE_MARK}\t{name}" if unreadable else f"{listed_as(name)}\t{label}"
            entry = entries.get(name)
            if entry is not None:
                old = lines[entry.number - 1]
                lines[entry.number - 1] = text + (_line_end(old) or newline)
                entries[name] = LabelsEntry(name, label, entry.number)
            else:
                if lines and not _line_end(lines[-1]):
                    lines[-1] += newline
                lines.append(text + newline)
                entries[name] = LabelsEntry(name, label, len(lines))
            if not self._file.partial:
                lines.insert(0, LABELLING_HEADER + newline)
                entries = {n: e._replace(number=e.number + 1) for n, e in entries.items()}
            content = ("\ufeff" if self._file.bom else "") + "".join(lines)
            signature = self._write(content)
            self._file = LabelsFile(self.path, lines, self._file.bom, entries, True)
            self._signature_seen = signature
            if unreadable:
                self._labels.pop(name, None)
                self._unreadable.add(name)
            else:
                self._unreadable.discard(name)
                self._labels[name] = label
            return {"saved": True, **self._counts()}

    def _write(self, content: str) -> tuple:
        """Replace labels.tsv by ``content`` atomically and durably; returns the new file's signature."""
        # A symbolic link stays one: the file it points to is replaced.
        target = os.path.realpath(self.path)
        directory = os.path.dirname(target)
        temporary = os.path.join(directory, f".{os.path.basename(target)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode) if os.path.exists(target) else None
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(descriptor, "wb") as handle:
                if mode is not None:
                    os.fchmod(handle.fileno(), mode)
                handle.write(content.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
                info = os.fstat(handle.fileno())
            os.replace(temporary, target)
        except OSError as err:
            if os.path.lexists(temporary):
                os.remove(temporary)
            raise ValueError(f"{self.path}: cannot be written ({err.strerror}); it is left as it was") from None
        # The rename itself is on disk only once the folder is.
        try:
            folder = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as err:
            raise ValueError(f"{self.path}: written, but its folder could not be synced to disk ({err.strerror}); "
                             "a crash now may lose this save") from None
        return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns
