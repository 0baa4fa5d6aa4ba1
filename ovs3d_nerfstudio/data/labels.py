"""Reading and validating the scene's text labels, and what a label map holds where no label is known.

Labels are free text ("red apple", "a Hatsune Miku statue") and also name the mask files
``segmentations/<view>/<label>.png``, so two labels that differ only in case or spacing
would be ambiguous both to CLIP and to the evaluation. Every source of labels (a file,
the CLI, the viewer) goes through :func:`validate_labels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from ovs3d_nerfstudio.errors import UserFacingError


IGNORE = -1
"""Ground-truth label map value of pixels that no mask covers: left out of ``miou`` and
``accuracy``; the paper protocol counts them against whatever is predicted there."""


class LabelError(UserFacingError, ValueError):
    """A label list is unusable; the message says what is wrong and how to fix it."""


def normalize_label(label: str) -> str:
    """The key under which two labels count as the same: case-folded, spaces collapsed."""
    return " ".join(label.split()).casefold()


def read_labels(path: Path) -> List[str]:
    """Reads one label per line (utf-8), skipping blank lines and ``#`` comments.

    Surrounding whitespace is stripped; inner spaces are kept because they are part of
    the text prompt and of the mask file names.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise LabelError(f"Label file {path} does not exist. Create it with one label per line.") from error
    except UnicodeDecodeError as error:
        raise LabelError(f"Label file {path} is not valid utf-8 ({error.reason}). Save it as utf-8.") from error
    labels = []
    for line in text.splitlines():
        label = line.strip()
        if label and not label.startswith("#"):
            labels.append(label)
    return labels


def validate_labels(labels: Sequence[str], source: str) -> List[str]:
    """Returns the labels stripped, or raises :class:`LabelError` naming ``source``.

    Rejects an empty list, empty strings and duplicates (compared with
    :func:`normalize_label`), because each label must select exactly one class.
    """
    if len(labels) == 0:
        raise LabelError(f"No labels in {source}. Give at least one label, e.g. 'red apple'.")
    cleaned: List[str] = []
    seen: Dict[str, str] = {}
    for position, label in enumerate(labels):
        if not isinstance(label, str):
            raise LabelError(f"Label #{position + 1} in {source} is {label!r}, not text. Give labels as strings.")
        stripped = label.strip()
        if not stripped:
            raise LabelError(
                f"Label #{position + 1} in {source} is empty. Remove it or write the text of the class."
            )
        key = normalize_label(stripped)
        if key in seen:
            raise LabelError(
                f"Duplicate label '{stripped}' in {source} (same as '{seen[key]}' ignoring case and spaces). "
                "Each class must be listed once; remove or rename one of them."
            )
        seen[key] = stripped
        cleaned.append(stripped)
    return cleaned
