"""ppocr_det: DB decoding with known answers, and COCO mAP of the real PP-OCRv4 detector through the API."""

import numpy as np
import pytest

from lpot_research.measure.metrics import COCOmAP


def test_db_postprocess_known_box():
    pytest.importorskip("cv2", reason="opencv is not installed (pip install 'lpot-research[ocr]')")
    from lpot_research.models.ppocr_det import DBPostprocess

    prob = np.zeros((1, 1, 40, 40), np.float32)
    prob[0, 0, 7:17, 5:25] = 0.9  # a 20 x 10 region
    prob[0, 0, 30:32, 30:32] = 0.9  # 2 x 2: below min_size
    prob[0, 0, 25:28, 2:12] = 0.4  # above thresh, below box_thresh
    (out,) = DBPostprocess()(prob)
    d = 20 * 10 * 1.5 / (2 * 30)  # unclip: area * ratio / perimeter = 5
    np.testing.assert_allclose(out["boxes"], [[5 - d, 7 - d, 25 + d, 17 + d]])
    np.testing.assert_allclose(out["scores"], [0.9], rtol=1e-6)
    # through the metric: the decoded box against a ground truth equal to it scores 1
    m = COCOmAP(iou="0.5", postprocess=DBPostprocess())
    m.update(prob, [{"boxes": out["boxes"], "labels": np.array([1])}])
    assert m.result() == pytest.approx(1.0)


def test_detector_map_through_the_api(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    pytest.importorskip("rapidocr_onnxruntime", reason="the ocr extra is not installed")
    import lpot_research
    from lpot_research.models.ppocr_det import DBPostprocess, PPOCRDet

    b = PPOCRDet(eval_size=24, calib_size=8).load()
    metric = COCOmAP(iou="0.5", postprocess=DBPostprocess())
    r = lpot_research.tune(b.model, b.calib_dataloader, b.eval_dataloader, metric, framework="onnxrt",
                           exit_policy={"max_trials": 1}, output_dir=tmp_path, bench_batch_size=1)
    s = r.summary
    assert s.baseline["accuracy"] > 0.75  # the real detector finds the rendered words
    assert s.trials == 1 and s.best.accuracy > 0.7
