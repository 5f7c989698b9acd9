import math

import pytest

from lpot_research.core.errors import ConfigError
from lpot_research.quant.criterion import AccuracyCriterion


@pytest.mark.parametrize(
    "kind,tol,hib,base,acc,expected",
    [
        # relative, higher is better: threshold = base * (1 - tol)
        ("relative", 0.01, True, 0.80, 0.792, True),  # exactly at the threshold passes
        ("relative", 0.01, True, 0.80, 0.7919, False),
        ("relative", 0.01, True, 0.80, 0.85, True),
        # relative, lower is better (e.g. a loss): threshold = base * (1 + tol)
        ("relative", 0.10, False, 2.0, 2.2, True),
        ("relative", 0.10, False, 2.0, 2.21, False),
        ("relative", 0.10, False, 2.0, 1.5, True),
        # absolute, higher is better: threshold = base - tol
        ("absolute", 0.02, True, 0.80, 0.78, True),
        ("absolute", 0.02, True, 0.80, 0.7799, False),
        # absolute, lower is better: threshold = base + tol
        ("absolute", 0.5, False, 3.0, 3.5, True),
        ("absolute", 0.5, False, 3.0, 3.51, False),
        # relative uses |base|: a negative higher-is-better score still gets a lower threshold
        ("relative", 0.10, True, -2.0, -2.2, True),
        ("relative", 0.10, True, -2.0, -2.21, False),
    ],
)
def test_passes(kind, tol, hib, base, acc, expected):
    assert AccuracyCriterion(kind, tol, hib).passes(acc, base) is expected


def test_relative_and_absolute_differ():
    base = 0.5
    rel, ab = AccuracyCriterion("relative", 0.1), AccuracyCriterion("absolute", 0.1)
    assert rel.threshold(base) == pytest.approx(0.45)
    assert ab.threshold(base) == pytest.approx(0.40)
    assert ab.passes(0.42, base) and not rel.passes(0.42, base)


def test_nan_and_none_never_pass():
    c = AccuracyCriterion()
    assert not c.passes(float("nan"), 0.9)
    assert not c.passes(None, 0.9)
    assert not AccuracyCriterion(higher_is_better=False).passes(math.inf, 0.9)


@pytest.mark.parametrize("kwargs,needle", [
    ({"kind": "relativ"}, "'relativ'"),
    ({"tolerance": -0.1}, "-0.1"),
    ({"tolerance": float("nan")}, "nan"),
    ({"kind": "relative", "tolerance": 1.5}, "1.5"),
])
def test_bad_criterion_is_named(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        AccuracyCriterion(**kwargs)
