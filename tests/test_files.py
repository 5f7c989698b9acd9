"""Your own model file and data from the command line, for every framework: the README's commands, run
as written on small models the tests create, then the saved model reloaded with its framework alone."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpot_research.core.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
torch = pytest.importorskip("torch", reason="the test models are made from digits_cnn (PyTorch)")


def tune(cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


def verify(run: Path) -> str:
    v = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_saved_model.py"), str(run)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert v.returncode == 0, v.stdout + v.stderr
    return v.stdout


@pytest.fixture(scope="module")
def digits():
    from lpot_research.models.digits import DigitsCNN, digits_arrays

    spec = DigitsCNN()
    x, y = digits_arrays(32)
    return spec, spec.trained(), x.numpy(), y.numpy()


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    """model.onnx, model.pt2 (torch.export), model.pt (TorchScript) and eval.npz in one directory, as a user
    would have them."""
    d = tmp_path_factory.mktemp("mine")
    _, net, x, y = digits
    torch.jit.save(torch.jit.script(net), str(d / "model.pt"))
    program = torch.export.export(net.eval(), (torch.as_tensor(x[:2]),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, str(d / "model.pt2"))
    pytest.importorskip("onnx", reason="ONNX is not installed (pip install 'lpot-research[onnxrt]')")
    import onnx

    from lpot_research.adaptors.onnxrt import export_torch

    onnx.save(export_torch(net, torch.as_tensor(x[:1]), 17), str(d / "model.onnx"))
    np.savez(d / "eval.npz", x=x[1100:], y=y[1100:])  # 697 samples: 100 calibrate, 597 evaluate
    # bad files, as users have them: a download cut short, a model file that is something else, NaN in the data
    (d / "truncated.npz").write_bytes((d / "eval.npz").read_bytes()[:5000])
    (d / "garbage.onnx").write_bytes(b"<html>404 Not Found</html>" * 40)
    bad = x[1100:1200].copy()
    bad[3, 0, :5, 0], bad[9, 0, 0, :2] = np.nan, np.inf
    np.savez(d / "nan.npz", x=bad, y=y[1100:1200])
    return d


def readme_own_model_commands() -> list[list[str]]:
    """The commands of the README's "Your own model" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(m) for m in re.findall(r"^python tune\.py (.+?)\s*(?:#.*)?$", section, re.M)]


def test_the_readme_commands_tune_an_onnx_an_exported_and_a_torchscript_file(files):
    commands = readme_own_model_commands()
    assert {f"model.path=model.{ext}" for ext in ("onnx", "pt2", "pt")} <= {a for c in commands for a in c}
    for k, args in enumerate(commands):
        run = files / "runs" / str(k)
        r = tune(files, *args, "exit_policy.max_trials=2", f"hydra.run.dir={run}")
        assert r.returncode == 0, (args, r.stderr[-3000:])
        s = json.loads((run / "summary.json").read_text())
        assert s["met_criterion"] and s["best"]["latency_ratio"] < 1.0, s
        assert "outputs on 16 recorded samples: MATCH" in verify(run) and "accuracy" in verify(run)
        check_report(run, s)


def test_a_keras_file_with_an_image_folder(tmp_path, digits):
    pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install 'lpot-research[tensorflow]')")
    from PIL import Image

    from lpot_research.models.digits_keras import to_keras

    spec, net, x, y = digits
    to_keras({k: v.numpy() for k, v in net.state_dict().items()}, spec.width, spec.image_size).save(
        tmp_path / "model.keras")
    from sklearn.datasets import load_digits

    raw = load_digits()
    for i in range(1100, 1797):  # the 8x8 digits as PNGs; the transforms reproduce the model's preprocessing
        (tmp_path / "images" / str(raw.target[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray((raw.images[i] / 16.0 * 255).round().astype(np.uint8)).save(
            tmp_path / "images" / str(raw.target[i]) / f"{i}.png")
    r = tune(tmp_path, "framework=tensorflow", "model=file", "model.path=model.keras", "data=image_folder",
             "data.path=images", "data.transform={Resize: {size: 32}, Normalize: {mean: [0.3], std: [0.4]}}",
             "exit_policy.max_trials=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["met_criterion"] and s["baseline"]["accuracy"] > 0.95
    assert "MATCH" in verify(tmp_path / "run")


def test_an_mxnet_checkpoint_with_a_csv_of_files(tmp_path, digits):
    pytest.importorskip("lpot_research.adaptors.mxnet", reason="MXNet is not installed (pip install "
                                                               "'lpot-research[mxnet]')")
    from PIL import Image

    from lpot_research.adaptors.mxnet import MXNetAdaptor
    from lpot_research.models.digits_gluon import to_gluon

    spec, net, x, y = digits
    a = MXNetAdaptor(threads=1)
    gluon = to_gluon({k: v.numpy() for k, v in net.state_dict().items()}, spec.width, spec.image_size)
    a.save(a.prepare(gluon, x[:1]), tmp_path / "model", x[:1])
    rows = ["file,label"]
    for i in range(1100, 1400):
        Image.fromarray(((x[i, 0] * 0.4 + 0.3).clip(0, 1) * 255).round().astype(np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{y[i]}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    r = tune(tmp_path, "framework=mxnet", "model=file", "model.path=model-symbol.json", "data=files",
             "data.path=list.csv", "data.transform={Normalize: {mean: [0.3], std: [0.4]}}", "exit_policy.max_trials=2",
             f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["met_criterion"]
    assert "MATCH" in verify(tmp_path / "run")


def check_report(run: Path, s: dict) -> None:
    """report.md holds the summary's numbers, one row per trial, and the curve when there is one."""
    report = (run / "report.md").read_text()
    fp32_row = next(x for x in report.splitlines() if x.startswith("| FP32 baseline (timed alone at the start"))
    assert f") | {s['baseline']['accuracy']:.4f} | {s['baseline']['latency_ms']:.3f} |" in fp32_row
    assert f"| best (trial {s['best']['trial']}) | {s['best']['accuracy']:.4f} |" in report
    assert f"{s['trials']} trial(s), {s['failed_trials']} failed" in report and s["stop_reason"] in report
    trial_rows = report.split("## Trials", 1)[1].count("\n| ") - 1  # rows under the table's header
    assert trial_rows == s["trials"]
    if s["trials"] > 1:
        assert (run / "tuning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "(one trial: no tuning curve)" in report and not (run / "tuning_curve.png").exists()


@pytest.mark.parametrize("args,needle", [
    (["model=file"], "error: model=file needs model.path"),
    (["model=file", "model.path=nope.onnx"], "error: model.path='nope.onnx' does not exist"),
    (["model=file", "model.path=model.onnx", "data=npz", "data.path=eval.npz"],
     "error: model.path='model.onnx' is a model for framework=onnxrt, not framework=pytorch"),
    (["framework=onnxrt", "model=file", "model.path=model.onnx"], "error: model=file needs your data: data=npz"),
    (["framework=onnxrt", "model=file", "model.path=model.onnx", "data=npz", "data.path=missing.npz"],
     "error: data.path='missing.npz' is not a file"),
    (["framework=onnxrt", "model=file", "model.path=model.onnx", "data=npz", "data.path=eval.npz",
      "data.evaluation=[900,null]"], "error: data.evaluation range [900, 697) of the 697 sample(s)"),
    (["framework=onnxrt", "model=file", "model.path=model.onnx", "data=npz", "data.path=eval.npz", "data.inputs=y"],
     "error: the model does not run on the calibration data's inputs ((1,) int64)"),
    (["framework=onnxrt", "model=file", "model.path=garbage.onnx", "data=npz", "data.path=eval.npz"],
     "error: model.path='garbage.onnx' does not decode as an ONNX model (DecodeError"),
    (["framework=onnxrt", "model=file", "model.path=model.onnx", "data=npz", "data.path=truncated.npz"],
     "error: dataset npz 'truncated.npz' does not read as an .npz file (BadZipFile"),
    (["framework=onnxrt", "model=file", "model.path=model.onnx", "data=npz", "data.path=nan.npz"],
     "error: dataset npz 'nan.npz' array 'x' holds 7 NaN/inf value(s) in 2 sample(s), the first at sample 3"),
])
def test_bad_files_and_data_are_one_line(files, args, needle):
    r = tune(files, *args, "hydra.run.dir=runs/bad", timeout=300)
    assert r.returncode in (1, 2), r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(needle), r.stderr[-2000:]


def test_named_inputs_work_in_the_api_and_in_yaml(files, digits):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    import lpot_research
    from lpot_research.measure.metrics import TopK
    from lpot_research.models.data import ArrayLoader

    _, _, x, y = digits
    name = "input"
    calib = ArrayLoader({name: x[:100]}, y[:100], 32)
    ev = ArrayLoader({name: x[1300:]}, y[1300:], 64)
    r = lpot_research.tune(str(files / "model.onnx"), calib, ev, TopK(1), framework="onnxrt",
                           exit_policy={"max_trials": 1}, output_dir=files / "api_named")
    assert r.summary.met_criterion
    np.savez(files / "named.npz", pixels=x[1100:], y=y[1100:])
    out = files / "runs" / "yaml_named"
    r = tune(files, "framework=onnxrt", "model=file", "model.path=model.onnx", "data=npz", "data.path=named.npz",
             f"data.inputs={{{name}: pixels}}", "exit_policy.max_trials=1", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    with pytest.raises(Exception, match=r"the inputs are named \['pixels'\]; the model takes \['input'\]"):
        lpot_research.tune(str(files / "model.onnx"), ArrayLoader({"pixels": x[:100]}, y[:100], 32), ev, TopK(1),
                           framework="onnxrt", output_dir=files / "api_bad")


def test_a_ppocr_recognizer_file_with_its_characters_file(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime", reason="the ocr extra is not installed")
    import onnx

    from lpot_research.models.ppocr import PPOCRRec, rapidocr_model

    proto = onnx.load(str(rapidocr_model()))
    chars = {p.key: p.value for p in proto.metadata_props}["character"]
    del proto.metadata_props[:]  # a recognizer exported without its character list
    onnx.save(proto, str(tmp_path / "rec.onnx"))
    (tmp_path / "keys.txt").write_text(chars, encoding="utf-8")
    with pytest.raises(DataError, match="no 'character' metadata .*model.characters="):
        PPOCRRec(path=str(tmp_path / "rec.onnx"), eval_size=4, calib_size=2).load()
    b = PPOCRRec(path=str(tmp_path / "rec.onnx"), characters=str(tmp_path / "keys.txt"), eval_size=4,
                 calib_size=2).load()
    assert b.info["classes"] == len(chars.splitlines()) + 2 and b.info["source"] == str(tmp_path / "rec.onnx")
    with pytest.raises(ConfigError):
        from lpot_research.models.files import ModelFile

        ModelFile(path=str(tmp_path / "keys.txt"))  # not a model format
