"""Calibration dataloaders described in YAML."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpot_research.core.errors import ConfigError, DataError
from lpot_research.models.data import build_dataloader

ROOT = Path(__file__).resolve().parents[1]
DIGITS = {"dataset": {"name": "digits", "split": "train"}, "batch_size": 32,
          "transform": {"Resize": {"size": 32}, "Normalize": {"mean": [0.3], "std": [0.4]}}}


def test_digits_spec_reproduces_the_built_in_preprocessing():
    pytest.importorskip("torch", reason="the built-in digits preprocessing is torch's")
    from lpot_research.models.digits import digits_arrays

    loader = build_dataloader(DIGITS)
    ref, labels = digits_arrays(32)
    assert loader.inputs.shape == (1257, 1, 32, 32) and len(loader) == 40
    np.testing.assert_allclose(loader.inputs, ref[:1257].numpy(), atol=1e-5)  # PIL bilinear = torch bilinear
    np.testing.assert_array_equal(loader.labels, labels[:1257].numpy())


def test_nhwc_layout_and_center_crop():
    spec = {**DIGITS, "transform": {"Resize": {"size": 40}, "CenterCrop": {"size": 32}, "Rescale": {"scale": 2.0}}}
    x, _ = next(iter(build_dataloader(spec, layout="NHWC")))
    assert x.shape == (32, 32, 32, 1) and x.dtype == np.float32 and 1.0 < x.max() <= 2.0


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 50), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), value + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    loader = build_dataloader({"dataset": {"name": "image_folder", "root": str(tmp_path)}, "batch_size": 4,
                               "transform": {"Resize": {"size": [8, 8]}}})
    assert loader.inputs.shape == (6, 3, 8, 8) and list(loader.labels) == [0, 0, 0, 1, 1, 1]
    assert loader.inputs[0].mean() == pytest.approx(50 / 255, abs=1e-4)


@pytest.mark.parametrize("spec,error,needle", [
    ({"dataset": {"name": "imagenet"}}, ConfigError,
     "'imagenet' is unknown; valid choices: ['digits', 'image_folder', 'files', 'npz']"),
    ({**DIGITS, "transform": {"RandomCrop": {"size": 8}}}, ConfigError,
     "'RandomCrop' is unknown; valid choices: ['Resize'"),
    ({**DIGITS, "shuffle": True}, ConfigError, "shuffle is not a known key"),
    ({"dataset": {"name": "digits", "split": "val"}}, ConfigError, "split='val' is unknown"),
])
def test_bad_specs_name_the_value(spec, error, needle):
    with pytest.raises(error) as e:
        build_dataloader(spec)
    assert needle in str(e.value)


def test_an_empty_image_folder_is_a_data_error(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(DataError, match="holds no sample"):
        build_dataloader({"dataset": {"name": "image_folder", "root": str(tmp_path)}})


def run_tune(*args):
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_calibration_dataloader_from_tune_py(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'lpot-research[onnxrt]')")
    pytest.importorskip("torch", reason="the digits model is exported from PyTorch")
    spec = ("quantization.calibration.dataloader={dataset:{name:digits,split:train},batch_size:16,"
            "transform:{Resize:{size:32},Normalize:{mean:[0.3],std:[0.4]}}}")
    # (on ONNX Runtime, the cheapest real back end to start: the data's plumbing is what is tested)
    r = run_tune("framework=onnxrt", spec, "quantization.calibration.sampling_size=64",
                 f"hydra.run.dir={tmp_path / 'ok'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["met_criterion"]
    bad = spec.replace("Normalize", "Standardize")
    r = run_tune(bad, f"hydra.run.dir={tmp_path / 'bad'}")
    assert r.returncode != 0 and "transform 'Standardize' is unknown; valid choices" in r.stderr


def test_calibration_dataloader_through_the_api(tmp_path):
    pytest.importorskip("torch", reason="the digits model needs PyTorch")
    import lpot_research
    from lpot_research.models.digits import DigitsCNN

    b = DigitsCNN().load()
    r = lpot_research.tune(b.model, None, b.eval_dataloader, b.metric, output_dir=tmp_path,
                           config={"quantization": {"calibration": {"dataloader": DIGITS, "sampling_size": 64}}})
    assert r.summary.met_criterion
    with pytest.raises(ConfigError, match="give a calib_dataloader, or describe one"):
        lpot_research.tune(b.model, None, b.eval_dataloader, b.metric, output_dir=tmp_path / "none")


def test_the_digits_read_from_scikit_learns_file_are_load_digits_own():
    from sklearn.datasets import load_digits

    from lpot_research.models.data import sklearn_digits

    images, target = sklearn_digits()
    d = load_digits()
    assert images.shape == (1797, 8, 8) and np.array_equal(images, d.images) and np.array_equal(target, d.target)
