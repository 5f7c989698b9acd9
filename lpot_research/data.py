"""Small re-iterable dataloaders over in-memory arrays (torch tensors or numpy arrays)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lpot_research.errors import ConfigError, DataError


class ArrayLoader:
    """Yields (inputs, labels) batches in order; `inputs` may be one array or a tuple of arrays."""

    def __init__(self, inputs: Any, labels: Any, batch_size: int = 64) -> None:
        n = len(inputs[0]) if isinstance(inputs, tuple) else len(inputs)
        if n != len(labels):
            raise ValueError(f"inputs have {n} samples but labels have {len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        self.inputs, self.labels, self.batch_size, self.n = inputs, labels, batch_size, n

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for i in range(0, self.n, self.batch_size):
            s = slice(i, i + self.batch_size)
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


def _digits(split: str = "train", train_size: int = 1257) -> tuple[list[np.ndarray], np.ndarray]:
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ConfigError(f"dataset digits split={split!r} is unknown; valid choices: ['train', 'test', 'all']")
    d = load_digits()
    images = (d.images.astype(np.float32) / 16.0)[..., None]
    s = {"train": slice(0, train_size), "test": slice(train_size, None), "all": slice(None)}[split]
    return list(images[s]), d.target[s].astype(np.int64)


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


def _npz(path: str, inputs: str = "x", labels: str = "y") -> tuple[Any, Any]:
    with np.load(path) as f:
        missing = [k for k in (inputs, labels) if k not in f]
        if missing:
            raise ConfigError(f"dataset npz {path!r} has no array {missing[0]!r}; arrays: {list(f.keys())}")
        x = f[inputs].astype(np.float32)
        return list(x if x.ndim == 4 else x[..., None]), f[labels]


DATASETS = {"digits": _digits, "image_folder": _image_folder, "npz": _npz}


def build_dataloader(spec: Mapping[str, Any], layout: str = "NCHW") -> ArrayLoader:
    """A dataloader from its YAML description (see above); every bad name is an error naming the
    valid choices."""
    spec = dict(spec)
    unknown = [k for k in spec if k not in ("dataset", "transform", "batch_size")]
    if unknown:
        raise ConfigError(f"calibration.dataloader.{unknown[0]} is not a known key; "
                          "valid keys: ['dataset', 'transform', 'batch_size']")
    ds = dict(spec.get("dataset") or {})
    name = ds.pop("name", None)
    if name not in DATASETS:
        raise ConfigError(f"calibration.dataloader.dataset.name={name!r} is unknown; valid choices: {list(DATASETS)}")
    try:
        images, labels = DATASETS[name](**ds)
    except TypeError as e:
        raise ConfigError(f"dataset {name!r}: {e}") from None
    if not len(images):
        raise DataError(f"the calibration dataset {name!r} ({ds}) holds no image")
    steps = []
    for t, args in (spec.get("transform") or {}).items():
        if t not in TRANSFORMS:
            raise ConfigError(f"calibration.dataloader.transform {t!r} is unknown; valid choices: {list(TRANSFORMS)}")
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
    return ArrayLoader(np.stack(out), np.asarray(labels), int(spec.get("batch_size", 32)))
