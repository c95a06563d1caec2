"""Training data for the generators: read from folders, fingerprint, implied options.

The fingerprint (sha256 over every slice's HU and mask bytes, in order) goes into each
checkpoint, so a resume on different data is refused and `gan.synthesize` can find
the training folder again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from augment.datasets import SliceDataset
from augment.errors import ConfigError
from augment.folder import dataset_anatomy
from augment.sample import Sample
from augment.window import MODEL_WINDOW, WINDOWS


def data_fingerprint(data: Sequence[Sample], data_b: Sequence[Sample] | None = None) -> str:
    """sha256 over every slice's shape, HU bytes and mask bytes, in order (then domain B)."""
    h = hashlib.sha256()
    for part, samples in (("A", data), ("B", data_b or [])):
        h.update(part.encode())
        for s in samples:
            h.update(repr(s.image.shape).encode())
            h.update(np.ascontiguousarray(s.image, dtype=np.float32).tobytes())
            h.update(np.ascontiguousarray(s.mask, dtype=np.uint8).tobytes())
    return h.hexdigest()


def describe_data(data: Sequence[Sample], data_b: Sequence[Sample] | None) -> dict[str, Any]:
    """Fingerprint, size and patients of the training data (stored in checkpoints)."""
    info: dict[str, Any] = {
        "fingerprint": data_fingerprint(data, data_b),
        "n_samples": len(data),
        "patient_ids": sorted({s.patient_id for s in data}),
    }
    if data_b is not None:
        info["n_samples_b"] = len(data_b)
        info["patient_ids_b"] = sorted({s.patient_id for s in data_b})
    return info


def dataset_domain(info: dict[str, Any], samples: Sequence[Sample]) -> str | None:
    """The scanner/protocol domain a dataset says it is (``A``, ``B``...), or None.

    From its ``dataset.json`` (``domain``, or the phantom's ``config.domain``), else the
    one ``domain`` all its slices' records share.
    """
    for value in (info.get("domain"), (info.get("config") or {}).get("domain")):
        if isinstance(value, str) and value:
            return value
    found = {s.meta.get("domain") for s in samples}
    if len(found) == 1:
        value = found.pop()
        if isinstance(value, str) and value:
            return value
    return None


def open_dataset(data: str | os.PathLike | SliceDataset) -> SliceDataset:
    """Training data as a `SliceDataset`: a dataset folder, or a dataset given as one
    (e.g. the labelled patients of a split, `SliceDataset.subset`), used as is."""
    return data if isinstance(data, SliceDataset) else SliceDataset(data, cache=False)


def load_model_config(path: str | os.PathLike, model: str) -> dict[str, Any]:
    """A model's options from YAML: the ``<model>:`` or ``model:`` section, else the whole file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML ({first})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path}: cannot read the config file ({getattr(e, 'strerror', None) or e})"
        ) from None
    doc = doc or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(doc).__name__}")
    from gan.base import generator_names

    known = generator_names()

    for key in (model, "model"):
        if key not in doc:
            continue
        section = doc[key]
        if section is not None and not isinstance(section, dict):
            raise ConfigError(
                f"{path}: section {key!r} must be a mapping of options, got {type(section).__name__}"
            )
        # Other models' sections may share the file; anything else would be ignored silently.
        ignored = sorted(str(k) for k in doc if k != key and k not in known)
        if ignored:
            raise ConfigError(
                f"{path}: unknown section(s) {', '.join(ignored)} beside {key!r}; "
                f"known: model, {', '.join(known)}"
            )
        return dict(section or {})
    return dict(doc)


def require_anatomy(fields: set[str], values: dict[str, Any], folder: Any, model: str) -> None:
    """Refuse to train a generator that places lesions by anatomy when neither the data
    nor the user says which anatomy it is (the model's default would be a silent guess)."""
    if "anatomy" in fields and "anatomy" not in values:
        raise ConfigError(
            f"{folder}: the dataset does not say what anatomy it shows, and {model} places lesions by it: "
            "import it with `--anatomy head-ich|liver`, or set the model's `anatomy` option "
            "(gan train: `anatomy:` in --config; compare: `data.anatomy` in the experiment)"
        )


def data_defaults(
    fields: set[str], info: dict[str, Any], samples: Sequence[Sample]
) -> dict[str, Any]:
    """Model options a dataset implies, used where the user gave none."""
    values: dict[str, Any] = {}
    kind = dataset_anatomy(info)
    if kind is not None and "anatomy" in fields:
        values["anatomy"] = kind
    if kind is not None and "window" in fields:
        w = WINDOWS[MODEL_WINDOW[kind]]
        values["window"] = w.as_pair()
    shapes = {s.image.shape for s in samples}
    if "size" in fields and len(shapes) == 1 and len({*next(iter(shapes))}) == 1:
        values["size"] = next(iter(shapes))[0]  # square slices of one size
    if "n_classes" in fields:
        classes = [int(k) for k in (info.get("classes") or {})]
        values["n_classes"] = max(classes + [int(s.mask.max()) for s in samples] + [1])
    return values
