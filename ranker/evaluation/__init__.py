"""Offline (counterfactual) evaluation of ranking policies from the decision log.

``LoggedData`` is the one logged-data contract; ``IPS``, ``SNIPS``, ``DM``, ``DR`` and ``CressieRead`` estimate a
target policy's expected reward from it, and ``evaluate`` applies several at once with the Cressie-Read
empirical-likelihood interval as the primary confidence interval::

    from ranker.evaluation import LoggedData, evaluate

    data = LoggedData(reward=r, logged_probability=p_logged, target_probability=p_target)
    table = evaluate(data, r_min=-1, r_max=1)
    table["snips"]["estimate"], table["snips"]["interval"]
"""

from ranker.evaluation.estimators import DM, DR, IPS, SNIPS, CressieRead, Estimator, LoggedData, evaluate, weight_bound
from ranker.evaluation.intervals import cressie_read_interval, f_one_isf, gaussian_interval, normal_quantile

__all__ = [
    "DM",
    "DR",
    "IPS",
    "SNIPS",
    "CressieRead",
    "Estimator",
    "LoggedData",
    "cressie_read_interval",
    "evaluate",
    "f_one_isf",
    "gaussian_interval",
    "normal_quantile",
    "weight_bound",
]
