"""Built-in metrics. A metric is any object with update(predictions, labels), reset() and
result() -> float, and optionally `higher_is_better` (default True): that is all the tuner uses, so a
user metric needs no base class (see examples/custom_metric.py). Pick one from config with
`metric=<name>` (conf/metric/) or any class with `metric._target_=...`.

A metric that is the mean of per-sample scores says so with `sample_scores(predictions, labels)` (one
score per sample) and `sample_range` (the lowest and highest score a sample can get): the tuner then
scores samples itself, ranks failing configurations on a fixed subset and stops a trial's evaluation
once it can no longer meet the criterion (lpot_research.run.evaluation). F1 and COCO mAP are not means of
per-sample scores and are always computed on the whole set."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from lpot_research.core.errors import ConfigError, DataError


class Metric(Protocol):
    higher_is_better: bool

    def reset(self) -> None: ...
    def update(self, predictions: Any, labels: Any) -> None: ...
    def result(self) -> float: ...


def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensors, without importing torch here
        x = x.detach()
        if hasattr(x, "dequantize") and getattr(x, "is_quantized", False):
            x = x.dequantize()
        return x.float().cpu().numpy()
    return np.asarray(x)


class TopK:
    """Fraction of samples whose label is among the k highest scores."""

    higher_is_better = True

    def __init__(self, k: int = 1) -> None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"metric k={k!r} must be an int >= 1")
        self.k = k
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    sample_range = (0.0, 1.0)

    def sample_scores(self, predictions: Any, labels: Any) -> np.ndarray:
        """1 for each sample whose label is among its k best scores, else 0."""
        scores = to_numpy(predictions)
        labels = to_numpy(labels).astype(np.int64).reshape(-1)
        if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
            raise DataError(f"TopK expects scores of shape (N, C) and N labels, got {scores.shape} and "
                            f"{labels.shape[0]} labels: does every batch hold as many labels as inputs?")
        if self.k > scores.shape[1]:
            raise ConfigError(f"metric k={self.k} exceeds the number of classes ({scores.shape[1]})")
        outside = (labels < 0) | (labels >= scores.shape[1])
        if outside.any():
            raise DataError(f"{int(outside.sum())} label(s) outside the model's {scores.shape[1]} classes (e.g. "
                            f"{int(labels[outside][0])}): labels must be class indices 0..{scores.shape[1] - 1}")
        topk = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
        return (topk == labels[:, None]).any(axis=1).astype(np.float64)

    def update(self, predictions: Any, labels: Any) -> None:
        hits = self.sample_scores(predictions, labels)
        self.correct += int(hits.sum())
        self.total += hits.shape[0]

    def result(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def __repr__(self) -> str:
        return f"TopK(k={self.k})"


class F1:
    """F1 score of predicted classes (argmax of (N, C) scores, or (N,) class ids) against labels,
    computed by scikit-learn over everything seen since reset. average="binary" scores the
    positive class `pos_label`; "macro" is the unweighted mean over the classes present."""

    higher_is_better = True
    AVERAGES = ("binary", "macro", "micro", "weighted")

    def __init__(self, average: str = "macro", pos_label: int = 1) -> None:
        if average not in self.AVERAGES:
            raise ConfigError(f"metric average={average!r} is unknown; valid choices: {list(self.AVERAGES)}")
        self.average, self.pos_label = average, pos_label
        self.reset()

    def reset(self) -> None:
        self.preds: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, predictions: Any, labels: Any) -> None:
        p = to_numpy(predictions)
        p = p.argmax(axis=1) if p.ndim == 2 else p.reshape(-1)
        y = to_numpy(labels).astype(np.int64).reshape(-1)
        if p.shape[0] != y.shape[0]:
            raise ValueError(f"F1 got {p.shape[0]} predictions for {y.shape[0]} labels")
        self.preds.append(p.astype(np.int64))
        self.labels.append(y)

    def result(self) -> float:
        from sklearn.metrics import f1_score

        if not self.labels:
            return float("nan")
        y, p = np.concatenate(self.labels), np.concatenate(self.preds)
        kw = {"pos_label": self.pos_label} if self.average == "binary" else {}
        return float(f1_score(y, p, average=self.average, zero_division=0, **kw))

    def __repr__(self) -> str:
        return f"F1(average={self.average!r})"


class COCOmAP:
    """COCO detection mAP computed by pycocotools' COCOeval (the reference implementation).

    update(predictions, labels) takes one entry per image. A prediction is a dict with "boxes"
    (K, 4) as [x1, y1, x2, y2] in pixels, "scores" (K,) and "labels" (K,) category ids; a label is a
    dict with "boxes" and "labels" of the ground truth (optionally "iscrowd"). `postprocess`, if
    given, turns a batch of raw model outputs into that list of dicts first (e.g. a detector's
    decoding). result() is AP averaged over IoU 0.50:0.95 (`iou="0.50:0.95"`, COCO's headline
    number), or AP at IoU 0.5 / 0.75."""

    higher_is_better = True
    STAT = {"0.50:0.95": 0, "0.5": 1, "0.75": 2}

    def __init__(self, iou: str = "0.50:0.95", max_detections: int = 100, postprocess: Any = None) -> None:
        if str(iou) not in self.STAT:
            raise ConfigError(f"metric iou={iou!r} is unknown; valid choices: {list(self.STAT)}")
        if postprocess is not None and not callable(postprocess):
            raise ConfigError(f"metric postprocess={postprocess!r} is not callable")
        self.iou, self.max_detections, self.postprocess = str(iou), max_detections, postprocess
        self.reset()

    def reset(self) -> None:
        self.images: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def update(self, predictions: Any, labels: Any) -> None:
        if self.postprocess is not None:
            predictions = self.postprocess(predictions)
        if len(predictions) != len(labels):
            raise ValueError(f"COCOmAP got predictions for {len(predictions)} images and labels for {len(labels)}")
        for p, y in zip(predictions, labels, strict=True):
            self.images.append(({k: to_numpy(v) for k, v in p.items()}, {k: to_numpy(v) for k, v in y.items()}))

    def result(self) -> float:
        import contextlib
        import io

        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gts, dets, cats = [], [], set()
        for img, (p, y) in enumerate(self.images):
            crowd = y.get("iscrowd", np.zeros(len(y["labels"])))
            for k, (box, c) in enumerate(zip(y["boxes"].reshape(-1, 4), y["labels"].reshape(-1), strict=True)):
                x1, y1, x2, y2 = map(float, box)
                gts.append({"id": len(gts) + 1, "image_id": img, "category_id": int(c),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                            "iscrowd": int(crowd[k])})
                cats.add(int(c))
            for box, score, c in zip(p["boxes"].reshape(-1, 4), p["scores"].reshape(-1), p["labels"].reshape(-1),
                                     strict=True):
                x1, y1, x2, y2 = map(float, box)
                dets.append({"image_id": img, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "score": float(score)})
                cats.add(int(c))
        if not gts:
            return float("nan")
        if not dets:
            return 0.0
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
            gt = COCO()
            gt.dataset = {"images": [{"id": i} for i in range(len(self.images))], "annotations": gts,
                          "categories": [{"id": c} for c in sorted(cats)]}
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
            ev.params.maxDets = [1, 10, self.max_detections]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return float(max(ev.stats[self.STAT[self.iou]], 0.0))  # -1 = no ground truth at that setting

    def __repr__(self) -> str:
        return f"COCOmAP(iou={self.iou!r})"
