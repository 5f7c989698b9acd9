"""ppocr_rec: the PP-OCRv4 text-line recognizer (ONNX) shipped in the rapidocr-onnxruntime package,
evaluated on text lines rendered deterministically with Pillow's built-in font.

The model reads a 48-pixel-high BGR line image (normalized to [-1, 1], right-padded to a fixed width)
and outputs per-column character probabilities, decoded by greedy CTC with the character list stored
in the model's metadata. The metric is exact match of the whole line (or character accuracy).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lpot_research.core.errors import DataError
from lpot_research.measure.metrics import to_numpy
from lpot_research.models import ModelBundle, check_framework
from lpot_research.models.data import ArrayLoader

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"  # no I/l/1, O/o/0 look-alikes
HEIGHT = 48


def rapidocr_model(filename: str = "ch_PP-OCRv4_rec_infer.onnx", model: str = "ppocr_rec") -> Path:
    """A model file shipped inside the rapidocr-onnxruntime package."""
    try:
        import rapidocr_onnxruntime
    except ImportError as e:
        raise DataError(f"model={model} needs the package rapidocr-onnxruntime "
                        "(pip install 'lpot-research[ocr]')") from e
    path = Path(rapidocr_onnxruntime.__file__).parent / "models" / filename
    if not path.exists():
        raise DataError(f"{path} is missing from the installed rapidocr-onnxruntime package")
    return path


def characters(model: Any, keys: str | None = None) -> list[str]:
    """CTC classes: blank, the recognizer's characters, then the space. The characters come from a
    keys file (one per line, as PaddleOCR's ppocr_keys_v1.txt) when given, else from the model's
    metadata `character` (rapidocr's models carry it)."""
    if keys is not None:
        p = Path(keys)
        if not p.is_file():
            raise DataError(f"model.characters={keys!r} is not a file (one character per line)")
        chars = p.read_text(encoding="utf-8").splitlines()
    else:
        meta = {p.key: p.value for p in model.metadata_props}
        if "character" not in meta:
            raise DataError("the recognizer has no 'character' metadata to decode its output with: give its "
                            "characters file (model.characters=ppocr_keys.txt)")
        chars = meta["character"].splitlines()
    return ["blank", *chars, " "]


def model_path(path: str | None, default: str, model: str) -> Path:
    """The ONNX file of a PP-OCR model: the given one, else rapidocr-onnxruntime's."""
    if path is None:
        return rapidocr_model(default, model)
    p = Path(path)
    if not p.is_file():
        raise DataError(f"model.path={path!r} is not a file (a PP-OCR ONNX model)")
    return p


def ctc_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """Greedy CTC: best class per column, repeats merged, blanks (class 0) dropped."""
    best = probs.argmax(-1)
    out = []
    for row in best:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(chars[i] for i in row[keep]))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class TextMatch:
    """Exact-match rate of decoded lines (kind="exact") or character accuracy (kind="char":
    1 - edit distance / label length, averaged)."""

    higher_is_better = True

    def __init__(self, chars: list[str] | None = None, kind: str = "exact") -> None:
        if kind not in ("exact", "char"):
            from lpot_research.core.errors import ConfigError

            raise ConfigError(f"metric kind={kind!r} is unknown; valid choices: ['exact', 'char']")
        self.chars, self.kind = chars, kind
        self.reset()

    def reset(self) -> None:
        self.exact = 0
        self.char_score = 0.0
        self.total = 0

    sample_range = (0.0, 1.0)

    def _pairs(self, predictions: Any, labels: Any) -> list[tuple[str, str]]:
        if self.chars is None:
            raise DataError("TextMatch needs the recognizer's character list")
        texts = ctc_decode(to_numpy(predictions), self.chars)
        return [(got.strip(), str(want).strip()) for got, want in zip(texts, labels, strict=True)]

    def sample_scores(self, predictions: Any, labels: Any) -> np.ndarray:
        """Per line: 1/0 for an exact match, or 1 - edit distance / label length for character accuracy."""
        pairs = self._pairs(predictions, labels)
        if self.kind == "exact":
            return np.array([float(g == w) for g, w in pairs])
        return np.array([max(0.0, 1 - edit_distance(g, w) / max(1, len(w))) for g, w in pairs])

    def update(self, predictions: Any, labels: Any) -> None:
        for got, want in self._pairs(predictions, labels):
            self.exact += got == want
            self.char_score += max(0.0, 1 - edit_distance(got, want) / max(1, len(want)))
            self.total += 1

    def result(self) -> float:
        if not self.total:
            return float("nan")
        return (self.exact if self.kind == "exact" else self.char_score) / self.total


def render_lines(n: int, seed: int, width: int = 320) -> tuple[np.ndarray, list[str]]:
    """n text lines (a random token of 3-10 letters/digits), rendered with Pillow's built-in font at
    random sizes with slight rotation, blur and noise; preprocessed as the recognizer expects:
    BGR, height 48, aspect kept, scaled to [-1, 1], right-padded with 0 to `width`."""
    import cv2
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    images = np.zeros((n, 3, HEIGHT, width), dtype=np.float32)
    labels = []
    fonts: dict[int, Any] = {}
    for k in range(n):
        # one token: the recognizer (trained mostly on Chinese) drops spaces between short Latin words
        text = "".join(rng.choice(list(ALPHABET), size=int(rng.integers(3, 11))))
        size = int(rng.integers(24, 36))
        font = fonts.setdefault(size, ImageFont.load_default(size=size))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(4, 12))
        img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), int(rng.integers(215, 256)))
        ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=int(rng.integers(0, 70)))
        img = img.rotate(float(rng.uniform(-2, 2)), resample=Image.BILINEAR, expand=True,
                         fillcolor=int(np.median(np.asarray(img))))
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.0))))
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(0, 8), (img.height, img.width))
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        bgr = np.repeat(arr[:, :, None], 3, axis=2)
        h, w = bgr.shape[:2]
        resized_w = min(width, math.ceil(HEIGHT * w / h))
        resized = cv2.resize(bgr, (resized_w, HEIGHT)).astype(np.float32).transpose(2, 0, 1) / 255.0
        images[k, :, :, :resized_w] = (resized - 0.5) / 0.5
        labels.append(text)
    return images, labels


class PPOCRRec:
    """Spec of the ppocr_rec bundle (an ONNX model: use framework=onnxrt)."""

    frameworks = ("onnxrt",)
    requires = ("onnxruntime", "rapidocr_onnxruntime", "cv2", "PIL")  # the ocr and onnxrt extras

    def __init__(self, name: str = "ppocr_rec", eval_size: int = 300, calib_size: int = 64, seed: int = 0,
                 width: int = 320, eval_batch_size: int = 16, calib_batch_size: int = 16, bench_batch_size: int = 8,
                 metric_kind: str = "exact", path: str | None = None, characters: str | None = None) -> None:
        """`path`: any PP-OCR recognizer ONNX (default: rapidocr-onnxruntime's PP-OCRv4), `characters`: its
        characters file when the model carries no `character` metadata."""
        self.name, self.eval_size, self.calib_size, self.seed, self.width = name, eval_size, calib_size, seed, width
        self.path, self.characters = path, characters
        self.eval_batch_size, self.calib_batch_size = eval_batch_size, calib_batch_size
        self.bench_batch_size, self.metric_kind = bench_batch_size, metric_kind

    def load(self, framework: str = "onnxrt") -> ModelBundle:
        import onnx

        check_framework(self.name, framework, ("onnxrt",))
        path = model_path(self.path, "ch_PP-OCRv4_rec_infer.onnx", self.name)
        proto = onnx.load(str(path))
        chars = characters(proto, self.characters)
        ev_x, ev_y = render_lines(self.eval_size, self.seed, self.width)
        cal_x, cal_y = render_lines(self.calib_size, self.seed + 1, self.width)
        return ModelBundle(
            name=self.name,
            model=proto,
            calib_dataloader=ArrayLoader(cal_x, cal_y, self.calib_batch_size),
            eval_dataloader=ArrayLoader(ev_x, ev_y, self.eval_batch_size),
            metric=TextMatch(chars, self.metric_kind),
            example_inputs=cal_x[:1],
            bench_batch_size=self.bench_batch_size,
            info={"source": str(path), "classes": len(chars)},
        )
