"""ppocr_det: the PP-OCRv4 text detector (ONNX, DB: differentiable binarization) shipped in the
rapidocr-onnxruntime package, on pages rendered deterministically with Pillow's built-in font, scored
with COCO box mAP (pycocotools) against the rendered words' boxes.

The detector outputs a per-pixel text probability map; `DBPostprocess` turns it into scored boxes the
way PP-OCR does: binarize, take each connected region, score it by its mean probability, and grow it
back by the "unclip" margin the model was trained to shrink text regions by.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lpot_research.measure.metrics import COCOmAP, to_numpy
from lpot_research.models import ModelBundle, check_framework
from lpot_research.models.data import ArrayLoader
from lpot_research.models.ppocr import ALPHABET, model_path

MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def render_pages(n: int, seed: int, height: int = 320, width: int = 320) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """n grey pages, each with 2-5 words (3-8 letters/digits, sizes 20-35 px) at random places that
    keep 6 px apart, light noise; the label of a page is its words' ink boxes. Preprocessed as the
    detector expects: RGB in [0, 1] normalized with ImageNet's mean and std, NCHW."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    images = np.zeros((n, 3, height, width), np.float32)
    labels = []
    fonts: dict[int, Any] = {}
    for k in range(n):
        img = Image.new("L", (width, height), int(rng.integers(200, 256)))
        draw = ImageDraw.Draw(img)
        boxes: list[list[int]] = []
        want, tries = int(rng.integers(2, 6)), 0
        while len(boxes) < want and tries < 50:
            tries += 1
            text = "".join(rng.choice(list(ALPHABET), size=int(rng.integers(3, 9))))
            size = int(rng.integers(20, 36))
            font = fonts.setdefault(size, ImageFont.load_default(size=size))
            left, top, right, bottom = font.getbbox(text)
            w, h = right - left, bottom - top
            if w + 8 >= width or h + 8 >= height:
                continue
            x, y = int(rng.integers(4, width - w - 4)), int(rng.integers(4, height - h - 4))
            box = [x, y, x + w, y + h]
            if any(not (box[2] + 6 < o[0] or o[2] + 6 < box[0] or box[3] + 6 < o[1] or o[3] + 6 < box[1])
                   for o in boxes):
                continue
            draw.text((x - left, y - top), text, font=font, fill=int(rng.integers(0, 80)))
            boxes.append(box)
        page = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 6), (height, width))
        rgb = np.repeat(np.clip(page, 0, 255)[:, :, None], 3, axis=2) / 255.0
        images[k] = ((rgb - MEAN) / STD).transpose(2, 0, 1)
        labels.append({"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "labels": np.ones(len(boxes), np.int64)})
    return images, labels


class DBPostprocess:
    """Probability maps (N, 1, H, W) -> per-image {"boxes", "scores", "labels"} (PP-OCR's DB decoding,
    axis-aligned): pixels above `thresh`, regions of at least `min_size` px scored by their mean
    probability and kept above `box_thresh`, each grown by area * unclip_ratio / perimeter."""

    def __init__(self, thresh: float = 0.3, box_thresh: float = 0.6, unclip_ratio: float = 1.5,
                 min_size: int = 3) -> None:
        self.thresh, self.box_thresh, self.unclip_ratio, self.min_size = thresh, box_thresh, unclip_ratio, min_size

    def __call__(self, predictions: Any) -> list[dict[str, np.ndarray]]:
        import cv2

        out = []
        for prob in to_numpy(predictions)[:, 0]:
            mask = (prob > self.thresh).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            boxes, scores = [], []
            for c in contours:
                x, y, w, h = cv2.boundingRect(c)
                if min(w, h) < self.min_size:
                    continue
                region = np.zeros_like(mask)
                cv2.fillPoly(region, [c], 1)
                score = float(prob[region.astype(bool)].mean())
                if score < self.box_thresh:
                    continue
                d = w * h * self.unclip_ratio / (2 * (w + h))
                boxes.append([x - d, y - d, x + w + d, y + h + d])
                scores.append(score)
            out.append({"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "scores": np.asarray(scores),
                        "labels": np.ones(len(boxes), np.int64)})
        return out


class PPOCRDet:
    """Spec of the ppocr_det bundle (an ONNX model: use framework=onnxrt)."""

    frameworks = ("onnxrt",)
    requires = ("onnxruntime", "rapidocr_onnxruntime", "cv2", "PIL")  # the ocr and onnxrt extras

    def __init__(self, name: str = "ppocr_det", eval_size: int = 96, calib_size: int = 32, seed: int = 0,
                 height: int = 320, width: int = 320, eval_batch_size: int = 8, calib_batch_size: int = 8,
                 bench_batch_size: int = 1, metric: Any = None, path: str | None = None) -> None:
        """`path`: any PP-OCR detector ONNX (default: rapidocr-onnxruntime's PP-OCRv4)."""
        self.name, self.eval_size, self.calib_size, self.seed, self.path = name, eval_size, calib_size, seed, path
        self.height, self.width = height, width
        self.eval_batch_size, self.calib_batch_size, self.bench_batch_size = (eval_batch_size, calib_batch_size,
                                                                               bench_batch_size)
        self.metric = metric if metric is not None else COCOmAP(iou="0.5", postprocess=DBPostprocess())

    def load(self, framework: str = "onnxrt") -> ModelBundle:
        import onnx

        check_framework(self.name, framework, ("onnxrt",))
        path = model_path(self.path, "ch_PP-OCRv4_det_infer.onnx", self.name)
        ev_x, ev_y = render_pages(self.eval_size, self.seed, self.height, self.width)
        cal_x, cal_y = render_pages(self.calib_size, self.seed + 1, self.height, self.width)
        return ModelBundle(
            name=self.name,
            model=onnx.load(str(path)),
            calib_dataloader=ArrayLoader(cal_x, cal_y, self.calib_batch_size),
            eval_dataloader=ArrayLoader(ev_x, ev_y, self.eval_batch_size),
            metric=self.metric,
            example_inputs=cal_x[:1],
            bench_batch_size=self.bench_batch_size,
            info={"source": str(path), "pages": self.eval_size},
        )
