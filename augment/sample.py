"""`Sample`, the unit every part of lesionforge passes around: one CT slice in HU, its
lesion mask, boxes and provenance.

Where samples live on disk is `augment.folder` (the dataset folder format); how files are
written safely is `augment.storage`; patient-level splits are `augment.splits`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from augment.errors import DataError


@dataclass
class Sample:
    """One 2D CT slice with its labels. Always in HU, never windowed in storage.

    Attributes:
        image: float32 (H, W), Hounsfield units.
        mask: uint8 (H, W), 0 = background, k = lesion class k.
        boxes: float32 (N, 4), ``x1, y1, x2, y2`` in pixels, pixel *edges*: a lesion
            covering columns 3..5 has ``x1 = 3, x2 = 6``. Derived from the mask when
            not given (one box per connected component of each class).
        labels: int64 (N,), the class of each box.
        meta: id, patient_id, source, slice index, spacing (row, col mm), synthetic,
            generator, seed, augmentation parameters...
    """

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        mask = np.asarray(self.mask)
        if self.image.ndim != 2:
            raise DataError(f"{self._where()}: image must be 2D, got shape {self.image.shape}")
        if mask.shape != self.image.shape:
            raise DataError(
                f"{self._where()}: mask shape {mask.shape} differs from image shape {self.image.shape}"
            )
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DataError(f"{self._where()}: mask values must be class ids in 0..255")
        if not np.isfinite(self.image).all():
            raise DataError(f"{self._where()}: image contains NaN or infinite HU values")
        self.mask = mask.astype(np.uint8, copy=False)
        if self.boxes is None:
            self.boxes, derived = boxes_from_mask(self.mask)
            if self.labels is None:
                self.labels = derived
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        if self.labels is None:
            self.labels = np.ones(len(self.boxes), dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.boxes):
            raise DataError(
                f"{self._where()}: {len(self.boxes)} boxes but {len(self.labels)} labels"
            )

    def _where(self) -> str:
        return str(self.meta.get("source") or self.meta.get("id") or "sample")

    @property
    def id(self) -> str:
        return str(self.meta.get("id", ""))

    @property
    def patient_id(self) -> str:
        return str(self.meta.get("patient_id", self.meta.get("id", "")))

    @property
    def has_lesion(self) -> bool:
        return bool(self.mask.any())

    def copy(self) -> Sample:
        """A deep copy (arrays and meta), so augmenting it never touches the original."""
        import copy

        return Sample(
            image=self.image.copy(),
            mask=self.mask.copy(),
            boxes=self.boxes.copy(),
            labels=self.labels.copy(),
            meta=copy.deepcopy(self.meta),
        )

    def replace(self, **changes: Any) -> Sample:
        """A copy with some fields changed; boxes are re-derived when only the mask changes."""
        if "mask" in changes and "boxes" not in changes:
            changes["boxes"] = None
            changes.setdefault("labels", None)
        changes.setdefault("meta", dict(self.meta))
        return dataclasses.replace(self, **changes)


def boxes_from_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One box per 8-connected component of each lesion class.

    Returns:
        ``(boxes, labels)``: float32 (N, 4) xyxy with exclusive max edges, int64 (N,).
        Ordered by class, then by component label (row-major first pixel).
    """
    mask = np.asarray(mask)
    boxes: list[list[float]] = []
    labels: list[int] = []
    structure = np.ones((3, 3), dtype=bool)
    for cls in np.unique(mask):
        if cls == 0:
            continue
        components, n = ndimage.label(mask == cls, structure=structure)
        for sl in ndimage.find_objects(components, max_label=n):
            if sl is None:
                continue
            rows, cols = sl
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
            labels.append(int(cls))
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )


# ----------------------------------------------------------------------------- files
