"""Small re-iterable dataloaders over in-memory arrays (torch tensors or numpy arrays)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lpot_research.core.errors import ConfigError, DataError


class ArrayLoader:
    """Yields (inputs, labels) batches in order; `inputs` may be one array, a tuple of arrays (several
    inputs) or a dict of them (input name -> array)."""

    def __init__(self, inputs: Any, labels: Any, batch_size: int = 64) -> None:
        n = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else (
            len(inputs[0]) if isinstance(inputs, tuple) else len(inputs))
        if n != len(labels):
            raise DataError(f"the inputs hold {n} samples but the labels {len(labels)}: one label per input")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        self.inputs, self.labels, self.batch_size, self.n = inputs, labels, batch_size, n

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for i in range(0, self.n, self.batch_size):
            s = slice(i, i + self.batch_size)
            if isinstance(self.inputs, dict):
                x: Any = {k: a[s] for k, a in self.inputs.items()}
            else:
                x = tuple(a[s] for a in self.inputs) if isinstance(self.inputs, tuple) else self.inputs[s]
            yield x, self.labels[s]


# ---------------------------------------------------------------------------------------------
# Dataloaders described in YAML (quantization.calibration.dataloader), as the seed's config shows:
#   dataloader:
#     batch_size: 32
#     dataset: {name: digits, split: train}          # | {name: image_folder, root: DIR} | {name: npz, path: F}
#     transform: {Resize: {size: 32}, CenterCrop: {size: 32}, Normalize: {mean: [0.3], std: [0.4]}}
# Images go through the transforms in the order given, as float32 HWC arrays in [0, 1], and come out
# as NCHW batches (NHWC for TensorFlow).


def _pil_resize(img: np.ndarray, size: Any, interpolation: str) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    if isinstance(size, int):  # the shorter side becomes `size`, as torchvision's Resize does
        oh, ow = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
    else:
        oh, ow = int(size[0]), int(size[1])
    resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}[interpolation]
    chans = [np.asarray(Image.fromarray(img[:, :, c].astype(np.float32), mode="F").resize((ow, oh), resample))
             for c in range(img.shape[2])]
    return np.stack(chans, axis=2)


def _center_crop(img: np.ndarray, size: Any) -> np.ndarray:
    ch, cw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = img.shape[:2]
    if ch > h or cw > w:
        raise ConfigError(f"CenterCrop size {size!r} is larger than the image ({h}x{w})")
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top:top + ch, left:left + cw]


def _normalize(img: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    mean_a, std_a = np.asarray(mean, np.float32).reshape(-1), np.asarray(std, np.float32).reshape(-1)
    if len(mean_a) not in (1, img.shape[2]) or len(std_a) not in (1, img.shape[2]):
        raise ConfigError(f"Normalize mean={mean!r} std={std!r} do not match {img.shape[2]} channel(s)")
    return (img - mean_a) / std_a


TRANSFORMS = {
    "Resize": lambda img, size, interpolation="bilinear": _pil_resize(img, size, interpolation),
    "CenterCrop": lambda img, size: _center_crop(img, size),
    "Normalize": lambda img, mean, std: _normalize(img, mean, std),
    "Rescale": lambda img, scale: img * np.float32(scale),
}


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images of 0..16, labels), read from the data file the
    package ships, as `sklearn.datasets.load_digits` does, without importing scikit-learn (~1 s)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError("the digits data ship with scikit-learn, which is not installed (pip install scikit-learn)")
    data = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _digits(split: str = "train", train_size: int = 1257) -> tuple[list[np.ndarray], np.ndarray]:
    if split not in ("train", "test", "all"):
        raise ConfigError(f"dataset digits split={split!r} is unknown; valid choices: ['train', 'test', 'all']")
    images, target = sklearn_digits()
    images = (images.astype(np.float32) / 16.0)[..., None]
    s = {"train": slice(0, train_size), "test": slice(train_size, None), "all": slice(None)}[split]
    return list(images[s]), target[s]


def _image_folder(root: str, extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")) -> tuple[list, Any]:
    """root/<class>/<image>: classes sorted by name are the labels 0..C-1 (as torchvision's ImageFolder)."""
    from PIL import Image

    base = Path(root)
    if not base.is_dir():
        raise ConfigError(f"dataset image_folder root={root!r} is not a directory")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((base / cls).iterdir()):
            if f.suffix.lower() in extensions:
                with Image.open(f) as im:
                    a = np.asarray(im.convert("L" if im.mode in ("L", "I", "F", "1") else "RGB"), np.float32) / 255.0
                images.append(a[..., None] if a.ndim == 2 else a)
                labels.append(label)
    return images, np.asarray(labels, np.int64)


def _load_image(f: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(f) as im:
        a = np.asarray(im.convert("L" if im.mode in ("L", "I", "F", "1") else "RGB"), np.float32) / 255.0
    return a[..., None] if a.ndim == 2 else a


def _files(path: str, file: str = "file", label: str = "label") -> tuple[list, Any]:
    """A CSV (with a header) or JSON-lines file of (image file, label) pairs; image paths are relative
    to the list's directory; labels are integers (class ids) or strings (texts, e.g. for OCR)."""
    import csv
    import json

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"dataset files path={path!r} is not a file")
    if p.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    else:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
    missing = [k for k in (file, label) if rows and k not in rows[0]]
    if missing:
        raise ConfigError(f"dataset files {path!r} has no column {missing[0]!r}; columns: {list(rows[0])}")
    images, labels = [], []
    for row in rows:
        f = p.parent / str(row[file])
        if not f.is_file():
            raise DataError(f"dataset files {path!r}: image {str(row[file])!r} does not exist ({f})")
        images.append(_load_image(f))
        labels.append(row[label])
    ints = all(isinstance(x, int) or str(x).lstrip("-").isdigit() for x in labels)
    return images, (np.asarray([int(x) for x in labels], np.int64) if ints else [str(x) for x in labels])


def _npz(path: str, inputs: Any = "x", labels: str = "y") -> tuple[Any, Any]:
    """Arrays of an .npz file: `inputs` names one array, a list of them (several inputs) or a mapping
    of the model's input names to arrays."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"dataset npz path={path!r} is not a file")
    names = list(inputs.values()) if isinstance(inputs, Mapping) else (
        [inputs] if isinstance(inputs, str) else list(inputs))
    try:
        with np.load(p) as f:
            missing = [k for k in (*names, labels) if k not in f]
            if missing:
                raise ConfigError(f"dataset npz {path!r} has no array {missing[0]!r}; arrays: {list(f.keys())}")
            arrays = {k: f[k] for k in (*names, labels)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated or not an npz
        if isinstance(e, ConfigError):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"dataset npz {path!r} does not read as an .npz file ({type(e).__name__}: {first})"
                          ) from None
    for name in names:
        _check_finite(arrays[name], f"dataset npz {path!r} array {name!r}")
    if isinstance(inputs, Mapping):
        x: Any = {k: arrays[v] for k, v in inputs.items()}
    else:
        x = arrays[inputs] if isinstance(inputs, str) else tuple(arrays[k] for k in inputs)
    return x, arrays[labels]


def _check_finite(a: np.ndarray, what: str) -> None:
    """Refuse floating inputs with NaN or inf, naming how many and the first sample holding one."""
    if not np.issubdtype(a.dtype, np.floating):
        return
    bad = ~np.isfinite(a)
    if bad.any():
        per_sample = bad.reshape(len(a), -1).any(axis=1) if a.ndim else bad.reshape(1)
        raise DataError(f"{what} holds {int(bad.sum())} NaN/inf value(s) in {int(per_sample.sum())} sample(s), the "
                        f"first at sample {int(np.argmax(per_sample))}: clean or drop them")


IMAGE_DATASETS = {"digits": _digits, "image_folder": _image_folder, "files": _files}
DATASETS = {**IMAGE_DATASETS, "npz": _npz}


def _as_images(x: Any) -> list[np.ndarray]:
    """An array of images (N, H, W) or (N, H, W, C) as HWC float32 images."""
    a = np.asarray(x, np.float32)
    if a.ndim not in (3, 4):
        raise ConfigError(f"transforms apply to images: the inputs have shape {a.shape}, not (N, H, W[, C])")
    return list(a if a.ndim == 4 else a[..., None])


def _transform(images: list[np.ndarray], transform: Mapping[str, Any] | None, layout: str) -> np.ndarray:
    steps = []
    for t, args in (transform or {}).items():
        if t not in TRANSFORMS:
            raise ConfigError(f"transform {t!r} is unknown; valid choices: {list(TRANSFORMS)}")
        steps.append((t, dict(args or {})))
    out = []
    for img in images:
        for t, args in steps:
            try:
                img = TRANSFORMS[t](img, **args)
            except TypeError as e:
                raise ConfigError(f"transform {t} {args}: {e}") from None
        out.append(np.ascontiguousarray(img if layout == "NHWC" else img.transpose(2, 0, 1), dtype=np.float32))
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ConfigError(f"the transformed images have different shapes {sorted(shapes)[:3]}; add a Resize/CenterCrop")
    return np.stack(out)


def load_dataset(dataset: Mapping[str, Any], transform: Mapping[str, Any] | None, layout: str,
                 where: str = "dataset") -> tuple[Any, Any]:
    """(inputs, labels) of a dataset description; images come out transformed, in `layout`."""
    ds = dict(dataset)
    name = ds.pop("name", None)
    if name not in DATASETS:
        raise ConfigError(f"{where}.name={name!r} is unknown; valid choices: {list(DATASETS)}")
    try:
        x, labels = DATASETS[name](**ds)
    except TypeError as e:
        raise ConfigError(f"{where} {name!r}: {e}") from None
    if not len(labels):
        raise DataError(f"the {where} {name!r} ({ds}) holds no sample")
    if name in IMAGE_DATASETS or transform:
        x = _transform(x if name in IMAGE_DATASETS else _as_images(x), transform, layout)
    return x, labels


def _select(x: Any, idx: np.ndarray) -> Any:
    if isinstance(x, dict):
        return {k: np.asarray(v)[idx] for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(np.asarray(v)[idx] for v in x)
    if isinstance(x, list):
        return [x[i] for i in idx]
    return np.asarray(x)[idx]


def build_dataloader(spec: Mapping[str, Any], layout: str = "NCHW") -> ArrayLoader:
    """A calibration dataloader from its YAML description (see above); every bad name is an error
    naming the valid choices."""
    spec = dict(spec)
    unknown = [k for k in spec if k not in ("dataset", "transform", "batch_size")]
    if unknown:
        raise ConfigError(f"calibration.dataloader.{unknown[0]} is not a known key; "
                          "valid keys: ['dataset', 'transform', 'batch_size']")
    x, labels = load_dataset(dict(spec.get("dataset") or {}), spec.get("transform"), layout,
                             "calibration.dataloader.dataset")
    return ArrayLoader(x, np.asarray(labels) if not isinstance(labels, list) else labels,
                       int(spec.get("batch_size", 32)))


class DataSpec:
    """Your own evaluation (and calibration) data, described in YAML (`data=npz|image_folder|files`):

        data: {kind: npz, path: eval.npz, inputs: x, labels: y, batch_size: 32,
               calibration: [0, 100], evaluation: [100, null], transform: {...}}

    `calibration` and `evaluation` are [start, stop) index ranges of the samples (null = open); by
    default the first min(100, n/2) samples calibrate and the rest evaluate, so the two never share a
    sample. A calibration dataloader in quantization.calibration.dataloader replaces this one's."""

    KINDS = ("npz", "image_folder", "files", "digits")

    def __init__(self, kind: str = "npz", path: str | None = None, inputs: Any = "x", labels: str = "y",
                 batch_size: int = 32, transform: Mapping[str, Any] | None = None, calibration: Any = None,
                 evaluation: Any = None, layout: str | None = None) -> None:
        if kind not in self.KINDS:
            raise ConfigError(f"data.kind={kind!r} is unknown; valid choices: {list(self.KINDS)}")
        if kind != "digits":
            what = "directory" if kind == "image_folder" else "file"
            if not path:
                raise ConfigError(f"data.path is required for data={kind} (a {what})")
            p = Path(str(path))
            if kind == "image_folder" and not p.is_dir():
                raise ConfigError(f"data.path={str(path)!r} is not a directory (image_folder: root/<class>/<image>)")
            if kind != "image_folder" and not p.is_file():
                raise ConfigError(f"data.path={str(path)!r} is not a file")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r} must be an int >= 1")
        for key, r in (("calibration", calibration), ("evaluation", evaluation)):
            if r is not None and (len(r) != 2 or any(v is not None and (not isinstance(v, int) or v < 0) for v in r)):
                raise ConfigError(f"data.{key}={list(r)!r} must be a [start, stop) range of sample indices "
                                  "(null = open)")
        if layout not in (None, "NCHW", "NHWC"):
            raise ConfigError(f"data.layout={layout!r} is unknown; valid choices: [null, 'NCHW', 'NHWC']")
        self.kind, self.path, self.inputs, self.labels = kind, path, inputs, labels
        self.batch_size, self.transform = batch_size, dict(transform) if transform else None
        self.calibration = list(calibration) if calibration is not None else None
        self.evaluation = list(evaluation) if evaluation is not None else None
        self.layout = layout

    def _dataset(self) -> dict[str, Any]:
        if self.kind == "npz":
            return {"name": "npz", "path": self.path, "inputs": self.inputs, "labels": self.labels}
        if self.kind == "image_folder":
            return {"name": "image_folder", "root": self.path}
        if self.kind == "files":
            return {"name": "files", "path": self.path}
        return {"name": "digits", "split": "all"}

    def loaders(self, layout: str = "NCHW") -> tuple[ArrayLoader, ArrayLoader]:
        """(calibration, evaluation) dataloaders; disjoint unless the ranges say otherwise."""
        x, labels = load_dataset(self._dataset(), self.transform, self.layout or layout, "data")
        n = len(labels)
        cal, ev = self.calibration, self.evaluation
        if cal is None and ev is None:
            k = min(100, max(1, n // 2))
            cal, ev = [0, k], [k, None]
        elif cal is None:  # calibrate on the samples evaluation leaves out (before it, else after it)
            cal = [0, ev[0]] if ev[0] else [ev[1] if ev[1] is not None else n, None]
        elif ev is None:
            ev = [cal[1] if cal[1] is not None else n, None] if not cal[0] else [0, cal[0]]
        ranges = {}
        for key, (a, b) in (("calibration", cal), ("evaluation", ev)):
            a, b = a or 0, n if b is None else min(b, n)
            if a >= b:
                raise DataError(f"data.{key} range [{a}, {b}) of the {n} sample(s) of {self.path or self.kind} is "
                                "empty")
            ranges[key] = np.arange(a, b)
        overlap = len(set(ranges["calibration"]) & set(ranges["evaluation"]))
        if overlap:
            import logging

            logging.getLogger("lpot_research").warning("data: %d sample(s) both calibrate and evaluate", overlap)
        lab = labels if isinstance(labels, list) else np.asarray(labels)
        return tuple(ArrayLoader(_select(x, r), _select(lab, r), self.batch_size)  # type: ignore[return-value]
                     for r in (ranges["calibration"], ranges["evaluation"]))
