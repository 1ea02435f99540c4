"""Success-rate intervals: Wilson's against a published value, Newcombe's paired interval against its structure
and its coverage, the verdict on a budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgevla.metrics.success_ci import (loss_verdict, paired_difference, success_uncertainty, uncertainty_said,
                                        wilson)


def test_wilson_matches_newcombes_worked_example():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", 81 of 263: 0.2553 to 0.3662.
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_wilson_stays_a_real_interval_at_0_and_100_percent():
    low, high = wilson(200, 200)
    assert high == 1.0 and 0.97 < low < 0.99  # not the point [1, 1] a normal approximation gives
    assert wilson(0, 200) == pytest.approx((1.0 - high, 1.0 - low))
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson(5, 4)


def test_the_paired_interval_mirrors_and_holds_its_estimate():
    rng = np.random.default_rng(0)
    first = (rng.random(200) < 0.95).tolist()
    second = [x and r > 0.03 for x, r in zip(first, rng.random(200))]
    d, low, high = paired_difference(first, second)
    assert d == pytest.approx(np.mean(first) - np.mean(second)) and low < d < high
    assert paired_difference(second, first) == pytest.approx((-d, -high, -low))  # order only flips the sign


def test_two_policies_that_solve_every_episode_get_the_width_wilson_allows():
    d, low, high = paired_difference([True] * 200, [True] * 200)
    width = 1.0 - wilson(200, 200)[0]
    assert d == 0.0 and (low, high) == pytest.approx((-width, width))


def test_agreement_between_the_policies_narrows_the_paired_interval():
    rng = np.random.default_rng(1)
    first = (rng.random(200) < 0.9).tolist()
    same_episodes = first[:-4] + [False] * 4  # fails where the first did, and 4 more
    unrelated = (rng.random(200) < float(np.mean(same_episodes))).tolist()
    _, low_same, high_same = paired_difference(first, same_episodes)
    _, low_other, high_other = paired_difference(first, unrelated)
    assert high_same - low_same < high_other - low_other


@pytest.mark.parametrize("p_first, p_second, rho", [(0.98, 0.96, 0.5), (0.9, 0.9, 0.8), (0.95, 0.8, 0.3)])
def test_the_paired_interval_covers_the_true_loss_about_95_percent_of_the_time(p_first, p_second, rho):
    """Correlated outcomes on shared episodes (a latent Gaussian per episode), 1,000 runs of 200 episodes."""
    rng = np.random.default_rng(2)
    from statistics import NormalDist

    t1, t2 = NormalDist().inv_cdf(p_first), NormalDist().inv_cdf(p_second)
    covered = 0
    for _ in range(1000):
        shared = rng.standard_normal(200)
        z1 = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal(200)
        z2 = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal(200)
        _, low, high = paired_difference((z1 < t1).tolist(), (z2 < t2).tolist())
        covered += low <= p_first - p_second <= high
    assert 0.92 <= covered / 1000 <= 0.985


def test_an_eval_result_carries_its_rates_interval():
    from edgevla.task import EvalResult

    result = EvalResult(episodes=4, success_rate=0.75, mean_steps=9.0, smoothness=0.1,
                        successes=[True, False, True, True])
    assert result.success_ci95 == wilson(3, 4) and result.to_dict()["success_ci95"] == list(wilson(3, 4))
    assert "successes" not in result.to_dict()


def test_the_verdict_on_a_budget():
    assert loss_verdict(-0.01, 0.019, 0.02) == "within"
    assert loss_verdict(0.021, 0.08, 0.02) == "over"
    assert loss_verdict(-0.01, 0.04, 0.02) == "undecided"


def test_the_reports_section_and_its_sentence():
    original = [True] * 197 + [False] * 3
    built = [True] * 193 + [False] * 7
    u = success_uncertainty(original, built, 0.02)
    assert u["episodes"] == 200 and u["loss"] == pytest.approx(0.02) and u["verdict"] == "undecided"
    assert u["original"]["rate"] == 0.985 and u["original"]["ci95"] == pytest.approx(list(wilson(197, 200)))
    said = uncertainty_said(u)
    assert said.startswith("over 200 episodes, 95 % intervals: original 98.5 % (") and "loss 2.0 pt (" in said
    assert said.endswith("the 2.0 pt budget lies inside the interval, so these episodes cannot tell; more "
                          "(evaluate.episodes) narrow it")
    assert success_uncertainty(original, original, None)["verdict"] is None
    with pytest.raises(ValueError, match="equally long"):
        paired_difference(original, built[:10])
