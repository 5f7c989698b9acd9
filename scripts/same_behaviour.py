"""Check that a change kept the tuner's behaviour: the same seeded runs in a `git worktree` of an earlier
commit and in this checkout must evaluate the same configurations in the same order, with the same
accuracies, pass/fail, early stops and best.

    python scripts/same_behaviour.py --against 0e2fb4b

Runs: every strategy on the fake framework with per-sample evaluation (exact early rejection), and
`random` on `digits_cnn` (PyTorch) with the model-size objective (latency would make the best depend
on timing noise). One thread; a few minutes. Prints one line per run: SAME or DIFF with the first
difference. Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("basic", "mse", "random", "tpe", "bayesian", "exhaustive")


def _summary(res) -> dict:
    """A run's summary.json: the same on disk in any checkout (`TuneResult.summary` became a typed object)."""
    return json.loads((Path(res.output_dir) / "summary.json").read_text())


def digest(out: Path) -> dict:
    """The runs, in the checkout this process imports lpot_research from (its working directory)."""
    import importlib

    import lpot_research
    from lpot_research.models.digits import DigitsCNN
    from tests.fakes import FakeAdaptor, indexed_loader
    from tests.helpers import run_fake

    # the checkout's own History (before the layout of issue 20 it was lpot_research.history; the
    # installed editable package would otherwise answer for a module the checkout does not have)
    layered = (Path(lpot_research.__file__).parent / "run").is_dir()
    History = importlib.import_module("lpot_research.run.history" if layered else "lpot_research.history").History
    runs = {}
    for strategy in STRATEGIES:
        d = out / f"fake_{strategy}"
        config = {} if strategy == "basic" else {"exit_policy": {"max_trials": 12}, "random_seed": 3}
        res = run_fake(d, FakeAdaptor(ops=5, per_sample=400), strategy, config=config, eval_loader=indexed_loader(400))
        runs[f"fake {strategy}"] = (res, History.read(d))
    b = DigitsCNN().load()
    d = out / "digits_random_modelsize"
    res = lpot_research.tune(b.model, b.calib_dataloader, b.eval_dataloader, b.metric, framework="pytorch",
                             strategy="random", objective="modelsize", output_dir=d,
                             config={"exit_policy": {"max_trials": 4, "timeout": 600}, "random_seed": 3})
    runs["digits_cnn random modelsize"] = (res, History.read(d))
    return {name: {"trials": [[t.config_id, t.note, t.accuracy, t.rank_accuracy, t.passed, t.rejected, t.samples]
                              for t in h.trials],
                   "best": (_summary(res)["best"] or {}).get("config_id"), "stop": _summary(res)["stop_reason"]}
            for name, (res, h) in runs.items()}


def run_in(checkout: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(checkout)}
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); import same_behaviour as s; "
            f"from pathlib import Path; print('DIGEST ' + json.dumps(s.digest(Path({str(out)!r}))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True,
                       timeout=1800)
    line = next((x for x in r.stdout.splitlines() if x.startswith("DIGEST ")), None)
    if r.returncode != 0 or line is None:
        sys.exit(f"the runs failed in {checkout}:\n{r.stderr[-3000:]}")
    return json.loads(line[len("DIGEST "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", required=True, help="the earlier commit (a git revision)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lpot_same_") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.against], cwd=ROOT, check=True)
        try:
            before, after = run_in(old, Path(tmp) / "runs_old"), run_in(ROOT, Path(tmp) / "runs_new")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    differ = 0
    for name, a in before.items():
        b = after.get(name)
        if a == b:
            print(f"SAME {name}: {len(a['trials'])} trials, best {a['best']}, stop: {a['stop']}")
            continue
        differ += 1
        pairs = zip(a["trials"], (b or {}).get("trials", []), strict=False)  # lengths may differ
        first = next((i for i, (x, y) in enumerate(pairs) if x != y), None)
        print(f"DIFF {name}: best {a['best']} -> {(b or {}).get('best')}; first differing trial: "
              f"{'none (lengths differ)' if first is None else first + 1}")
        if first is not None:
            print(f"     before {a['trials'][first]}\n     after  {b['trials'][first]}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
