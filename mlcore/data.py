"""Read the Kaggle folder layout, carve a patient-wise validation set, cache decoded arrays."""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mlcore.framing import RandomFraming
from mlcore.preprocess import Preprocessing

LABELS = ("NORMAL", "PNEUMONIA")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm"}
STRETCHED_COPY_SIZE = (224, 224)
CACHE_VERSION = "5"  # bump when preprocess_image changes
DEFAULT_PREPROCESSING = Preprocessing()

_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 pneumonia

    @property
    def patient(self) -> str:
        return patient_id(self.path.name)


def patient_id(filename: str) -> str:
    """'person22_virus_55.jpeg' -> 'person22'; 'NORMAL2-IM-0955-0001.jpeg' -> 'NORMAL2-IM-0955'."""
    stem = Path(filename).stem
    for pattern in (_PERSON, _IM):
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def list_split(root: str | os.PathLike, split: str) -> list[Sample]:
    """Every image under <root>/<split>/{NORMAL,PNEUMONIA}/, sorted for determinism."""
    samples = []
    for label_index, label in enumerate(LABELS):
        folder = Path(root) / split / label
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Expected a folder {folder} (Kaggle layout <root>/<split>/<label>/)"
            )
        samples += [
            Sample(path, label_index)
            for path in sorted(folder.iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
    return samples


def is_stretched_copy(path: Path) -> bool:
    with Image.open(path) as image:
        return image.size == STRETCHED_COPY_SIZE


def carve_validation(
    samples: Sequence[Sample], fraction: float = 0.35, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split train into (train, validation) by patient, stratified by label.

    Only patients whose files are all full-resolution originals may go to validation:
    the official test split is made of originals only, and a validation set of
    re-encoded 224x224 copies would judge the model on the wrong kind of image.
    `fraction` is the share of those eligible patients that goes to validation.
    """
    by_patient: dict[tuple[int, str], list[Sample]] = {}
    for sample in samples:
        by_patient.setdefault((sample.label, sample.patient), []).append(sample)
    rng = random.Random(seed)
    validation_keys = set()
    for label in range(len(LABELS)):
        eligible = sorted(
            key
            for key, group in by_patient.items()
            if key[0] == label and not any(is_stretched_copy(s.path) for s in group)
        )
        rng.shuffle(eligible)
        validation_keys.update(eligible[: round(len(eligible) * fraction)])
    train = [s for s in samples if (s.label, s.patient) not in validation_keys]
    validation = [s for s in samples if (s.label, s.patient) in validation_keys]
    return train, validation


def _load_one(args: tuple[str, Preprocessing, RandomFraming | None]) -> np.ndarray:
    path, preprocessing, framing = args
    content = Path(path).read_bytes()
    if framing is None:
        return preprocessing(content)
    return preprocessing(framing(preprocessing.source_film(content), Path(path).name))


def load_arrays(
    samples: Sequence[Sample],
    preprocessing: Preprocessing = DEFAULT_PREPROCESSING,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    framing: RandomFraming | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess every sample into (x uint8 [N,S,S,1], y float32 [N]).

    With `framing`, each film is re-framed first (one view of framing augmentation).

    With `cache_dir`, the arrays are kept in a .npy file named after the list of files,
    their sizes and modification times, so a second run loads in well under a second.
    """
    labels = np.array([s.label for s in samples], dtype=np.float32)
    cache_file = None
    if cache_dir is not None:
        view = f"|{framing}" if framing else ""
        key = hashlib.sha256(f"{CACHE_VERSION}|{preprocessing}{view}".encode())
        for sample in samples:
            stat = sample.path.stat()
            key.update(f"|{sample.path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        cache_file = Path(cache_dir) / f"images-{preprocessing.size}-{key.hexdigest()[:20]}.npy"
        if cache_file.exists():
            return np.load(cache_file), labels
    jobs = [(str(s.path), preprocessing, framing) for s in samples]
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if workers > 1 and len(jobs) > 64:
        # Threads, not processes: Pillow decodes with the GIL released, and a Celery
        # prefork child (a daemon process) may not start processes of its own.
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(_load_one, jobs))
    else:
        arrays = [_load_one(job) for job in jobs]
    size = preprocessing.size
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, 1), np.uint8)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # A partial file of its own: parallel runs may build the same cache.
        with tempfile.NamedTemporaryFile(
            dir=cache_file.parent, suffix=".tmp.npy", delete=False
        ) as partial:
            np.save(partial, images)
        Path(partial.name).replace(cache_file)
    return images, labels
