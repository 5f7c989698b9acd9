"""Built-in metrics against cases with known answers, and the metric interface from config."""

import numpy as np
import pytest

from lpot_research.core.errors import ConfigError, DataError
from lpot_research.measure.metrics import F1, COCOmAP, TopK


def test_topk():
    m = TopK(2)
    m.update(np.array([[0.1, 0.5, 0.4], [0.8, 0.05, 0.15]]), np.array([2, 1]))
    assert m.result() == 0.5


def test_topk_refuses_labels_it_cannot_score():
    m = TopK(1)
    with pytest.raises(DataError, match=r"2 label\(s\) outside the model's 3 classes \(e.g. 5\)"):
        m.update(np.eye(3)[[0, 1, 2]], np.array([0, 5, 7]))  # FP32 would score 1/3 and every INT8 model too
    with pytest.raises(DataError, match="does every batch hold as many labels as inputs"):
        m.update(np.eye(3)[[0, 1, 2]], np.array([0, 1]))


def test_f1_binary_known_answer():
    # tp=2 (idx 0,1), fp=1 (idx 2), fn=1 (idx 3): precision 2/3, recall 2/3, F1 2/3
    m = F1(average="binary")
    m.update(np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0]))
    assert m.result() == pytest.approx(2 / 3)
    m.reset()
    m.update(np.array([[0.2, 0.8], [0.9, 0.1]]), np.array([1, 0]))  # scores: argmax
    assert m.result() == 1.0


def test_f1_macro_known_answer_over_batches():
    m = F1(average="macro")
    # class 0: tp 1, fp 0, fn 1 -> F1 2/3; class 1: tp 1, fp 1, fn 0 -> F1 2/3; class 2: tp 1 -> 1
    m.update(np.array([0, 1]), np.array([0, 1]))
    m.update(np.array([1, 2]), np.array([0, 2]))
    assert m.result() == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    with pytest.raises(ConfigError, match="'median'.*'binary', 'macro'"):
        F1(average="median")


def box(x1, y1, x2, y2):
    return np.array([[x1, y1, x2, y2]], dtype=np.float64)


def test_coco_map_perfect_detections_score_one():
    m = COCOmAP()
    gt = {"boxes": np.array([[10, 10, 50, 50], [60, 60, 90, 100]], dtype=float), "labels": np.array([1, 2])}
    det = {"boxes": gt["boxes"].copy(), "scores": np.array([0.9, 0.8]), "labels": np.array([1, 2])}
    m.update([det], [gt])
    assert m.result() == pytest.approx(1.0)


def test_coco_map_partial_overlap_known_answer():
    # one ground truth 0..100 x 0..100, one detection 0..100 x 0..60: IoU 0.6, so it matches at the
    # thresholds 0.50, 0.55, 0.60 (AP 1 each) and misses at the seven above (AP 0): mAP = 3/10
    gt = {"boxes": box(0, 0, 100, 100), "labels": np.array([1])}
    det = {"boxes": box(0, 0, 100, 60), "scores": np.array([0.9]), "labels": np.array([1])}
    m = COCOmAP()
    m.update([det], [gt])
    assert m.result() == pytest.approx(0.3)
    m50 = COCOmAP(iou="0.5")
    m50.update([det], [gt])
    assert m50.result() == pytest.approx(1.0)


def test_coco_map_false_positive_ranked_first_halves_precision():
    # two images, one object each; the higher-scored detection is a false positive (wrong place),
    # so at IoU 0.5 recall 1/2 at precision 1/2 ... COCO's 101-point AP for (tp at rank 2 only) with
    # two ground truths: recall reaches 0.5 with precision 0.5 -> AP = 0.5 * 51/101
    gts = [{"boxes": box(0, 0, 10, 10), "labels": np.array([1])}, {"boxes": box(0, 0, 10, 10), "labels": np.array([1])}]
    dets = [{"boxes": box(50, 50, 60, 60), "scores": np.array([0.9]), "labels": np.array([1])},
            {"boxes": box(0, 0, 10, 10), "scores": np.array([0.5]), "labels": np.array([1])}]
    m = COCOmAP(iou="0.5")
    m.update(dets, gts)
    assert m.result() == pytest.approx(0.5 * 51 / 101)


def test_f1_through_the_api(tmp_path):
    pytest.importorskip("torch", reason="the digits model needs PyTorch")
    import lpot_research
    from lpot_research.models.digits import DigitsCNN

    b = DigitsCNN().load()
    r = lpot_research.tune(b.model, b.calib_dataloader, b.eval_dataloader, F1(average="macro"), output_dir=tmp_path)
    s = r.summary
    assert s.met_criterion and 0.95 < s.baseline["accuracy"] < 1.0
    ref = F1(average="macro")  # the baseline is the FP32 model's macro F1 over the evaluation data
    for x, y in b.eval_dataloader:
        ref.update(b.model(x), y)
    assert s.baseline["accuracy"] == pytest.approx(ref.result())


def test_coco_map_from_tune_py(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    pytest.importorskip("rapidocr_onnxruntime", reason="the ocr extra is not installed")
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "tune.py"), "framework=onnxrt", "model=ppocr_det",
                        "model.eval_size=24", "model.calib_size=8", f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["model"] == "ppocr_det" and s["baseline"]["accuracy"] > 0.75 and s["trials"] >= 1


class WorstBatchTopK(TopK):
    """A TopK that aggregates its own way: the accuracy of its worst batch, not the mean over samples."""

    def reset(self) -> None:
        super().reset()
        self.batches = []

    def update(self, predictions, labels) -> None:
        self.batches.append(float(np.mean(self.sample_scores(predictions, labels))))

    def result(self) -> float:
        return min(self.batches)


class Identity:
    """An adaptor whose model's predictions are its inputs."""

    def predict(self, model, inputs):
        return inputs


def test_a_metric_that_overrides_result_is_scored_as_it_aggregates():
    from lpot_research.run.evaluation import Evaluator, scored_per_sample

    right, wrong = np.eye(3)[[0, 1, 2, 0]], np.eye(3)[[1, 1, 2, 0]]  # one-hot scores; labels 0,1,2,0
    loader = [(right, np.array([0, 1, 2, 0])), (wrong, np.array([0, 1, 2, 0]))]  # batch accuracies 1.0, 0.75
    assert scored_per_sample(TopK(1)) and not scored_per_sample(WorstBatchTopK(1))
    assert Evaluator(Identity(), loader, TopK(1)).evaluate(None, "m").accuracy == pytest.approx(7 / 8)
    assert Evaluator(Identity(), loader, WorstBatchTopK(1)).evaluate(None, "m").accuracy == pytest.approx(0.75)
