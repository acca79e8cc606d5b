"""The coverage benchmark's ablation of the Cressie-Read interval (scripts/coverage.py --ablation).

Its figures in docs/evaluation.md are only meaningful if the re-derived closed form, with nothing switched off,
is the interval ranker reports, and if its log form (λ = 0) is the same interval's other member of the family.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from ranker.evaluation import cressie_read_interval

SCRIPT = Path(__file__).parent.parent / "scripts" / "coverage.py"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("coverage_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("seed", range(6))
def test_the_ablations_reference_form_is_the_reported_interval(coverage, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    # mean weight below 1 on even seeds (the fake point at w_max pulls it up), above 1 on odd ones
    w = rng.choice([0.0, 1.2, 20.0], size=n, p=[0.6, 0.37, 0.03] if seed % 2 else [0.7, 0.28, 0.02])
    r = (rng.uniform(size=n) < rng.uniform(0.02, 0.6)).astype(float)
    reported = cressie_read_interval(w, r, r_min=0.0, r_max=1.0, w_max=25.0)
    assert coverage.variant_interval(w, r, 25.0, coverage.Variant()) == pytest.approx(reported, abs=1e-12)
    # without the unseen point the interval is the regression estimate ± √(F⁻¹ s²/n): narrower
    lower, upper = coverage.variant_interval(w, r, 25.0, coverage.Variant(fakes="none"))
    assert upper - lower < reported[1] - reported[0]


def test_the_log_form_meets_the_euclidean_one_where_weights_are_light(coverage) -> None:
    rng = np.random.default_rng(7)
    w = rng.choice([0.5, 1.5], size=4000)
    r = (rng.uniform(size=4000) < 0.4).astype(float)
    euclidean = cressie_read_interval(w, r, r_min=0.0, r_max=1.0, w_max=2.0)
    assert coverage.log_interval(w, r, 2.0) == pytest.approx(euclidean, abs=5e-4)
    assert euclidean[1] - euclidean[0] > 0.03
