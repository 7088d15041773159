"""The teacher comparison's numbers (``deep/studies/teachers.py``) against hand computations:
the interpolation at equal ID accuracy (the weights, the per-seed values, the first crossing of
a non-monotone curve, no extrapolation, λ on a log scale), the validation-chosen λ against an
argmax written here, the summary's mean ± std against NumPy, the reference's own point, the
paired verdicts, and the linear check's Spearman ρ against ranks computed here."""

import numpy as np
import pytest

from tracer_theory.deep.studies.teachers import (
    at_equal_id,
    crossings,
    format_teachers,
    linear_check,
    select_lambda,
    summarize,
    verdicts,
)
from tracer_theory.report.teachers import teachers_figure


def _curve(ids, forgets, lams=("0.1", "1", "10")):
    """``{λ key: {metric: {mean, std, seeds}}}`` from per-λ per-seed ID accuracies and
    forgettings (the means and stds by NumPy)."""
    def stats(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values)),
                "seeds": [float(v) for v in values]}

    return {lam: {"id_acc": stats(i), "forgetting": stats(f)}
            for lam, i, f in zip(lams, ids, forgets, strict=True)}


# Seed-mean ID accuracy 80, 70, 60 at λ = 0.1, 1, 10; forgetting means 12, 7, 3.
IDS = [(82, 78), (71, 69), (60, 60)]
FORGETS = [(10, 14), (6, 8), (2, 4)]


def test_equal_id_half_way_by_hand():
    """Target 75: half-way between λ = 0.1 and 1 (weight ½): seeds ½·10 + ½·6 = 8 and
    ½·14 + ½·8 = 11, mean 9.5, std 1.5; λ = √(0.1·1) on the log scale (not 0.55)."""
    row = at_equal_id(_curve(IDS, FORGETS), 75.0)
    assert row["between"] == ["0.1", "1"] and row["weight"] == 0.5 and row["crossings"] == 1
    assert row["forgetting"]["seeds"] == [8.0, 11.0]
    assert row["forgetting"]["mean"] == 9.5 and row["forgetting"]["std"] == 1.5
    assert row["lam"] == pytest.approx(np.sqrt(0.1), rel=1e-12)
    assert row["id_range"] == [60.0, 80.0]
    assert row["all_crossings"] == [9.5]


def test_equal_id_off_centre_by_hand():
    """Target 64: 60% of the way from λ = 1 (ID 70) to λ = 10 (ID 60): seeds 0.4·6 + 0.6·2 =
    3.6 and 0.4·8 + 0.6·4 = 5.6, mean 4.6, std 1; λ = 10^0.6."""
    row = at_equal_id(_curve(IDS, FORGETS), 64.0)
    assert row["between"] == ["1", "10"] and row["weight"] == pytest.approx(0.6, rel=1e-12)
    np.testing.assert_allclose(row["forgetting"]["seeds"], [3.6, 5.6], rtol=1e-12)
    assert row["forgetting"]["mean"] == pytest.approx(4.6, rel=1e-12)
    assert row["forgetting"]["std"] == pytest.approx(1.0, rel=1e-12)
    assert row["lam"] == pytest.approx(10**0.6, rel=1e-12)


def test_equal_id_at_a_grid_point_is_that_point():
    """Target 70, λ = 1's own ID accuracy: its runs, weight 0, one crossing."""
    row = at_equal_id(_curve(IDS, FORGETS), 70.0)
    assert row["between"] == ["1"] and row["weight"] == 0 and row["crossings"] == 1
    assert row["forgetting"]["seeds"] == [6.0, 8.0] and row["lam"] == 1.0
    assert crossings([80.0, 70.0, 60.0], 70.0) == [(1, 0.0)]
    assert crossings([80.0, 70.0], 70.0) == [(1, 0.0)]
    assert crossings([70.0, 80.0], 70.0) == [(0, 0.0)]


def test_equal_id_first_crossing_of_a_non_monotone_curve():
    """IDs 80, 70, 76: target 74 is crossed 60% of the way from λ = 0.1 to 1 (reported:
    0.4·12 + 0.6·7 = 9) and again 2/3 of the way from λ = 1 to 10 (forgetting 7 + ⅔·(3 − 7))."""
    row = at_equal_id(_curve([(80, 80), (70, 70), (76, 76)], FORGETS), 74.0)
    assert row["crossings"] == 2 and row["between"] == ["0.1", "1"]
    np.testing.assert_allclose(row["forgetting"]["seeds"], [0.4 * 10 + 0.6 * 6,
                                                            0.4 * 14 + 0.6 * 8], rtol=1e-12)
    assert row["forgetting"]["mean"] == pytest.approx(9.0, rel=1e-12)
    np.testing.assert_allclose(row["all_crossings"], [9.0, 7 + 2 / 3 * (3 - 7)], rtol=1e-12)
    assert crossings([80.0, 70.0, 76.0], 74.0) == [(0, pytest.approx(0.6)),
                                                   (1, pytest.approx(2 / 3))]


@pytest.mark.parametrize("target", [80.5, 59.5])
def test_equal_id_outside_the_range_is_not_extrapolated(target):
    row = at_equal_id(_curve(IDS, FORGETS), target)
    assert row["forgetting"] is None and row["crossings"] == 0
    assert row["id_range"] == [60.0, 80.0] and "[60.00, 80.00]" in row["note"]
    assert crossings([80.0, 70.0, 60.0], target) == []


def test_equal_id_lam_is_linear_from_zero():
    """A crossing between λ = 0 and λ = 2, a quarter of the way: λ = 0.5 (no log of 0)."""
    row = at_equal_id(_curve([(80, 80), (60, 60)], [(8, 8), (4, 4)], lams=("0", "2")), 75.0)
    assert row["weight"] == 0.25 and row["lam"] == 0.5 and row["forgetting"]["mean"] == 7.0


def _argmax_first(scores):
    """The key of the highest score, the first in the mapping's order on a tie."""
    keys = list(scores)
    return keys[int(np.argmax([scores[k]["score"] for k in keys]))]


def test_select_lambda_is_the_first_argmax():
    scores = {"0.3": {"score": 80.0}, "1": {"score": 82.0}, "3": {"score": 82.0},
              "10": {"score": 70.0}}
    assert select_lambda(scores) == "1" == _argmax_first(scores)
    rng = np.random.default_rng(0)
    for _ in range(50):  # ties frequent: integer scores in a small range
        scores = {f"{lam:g}": {"score": float(s), "id_val_acc": float(rng.uniform(0, 100))}
                  for lam, s in zip((0.3, 1, 3, 10), rng.integers(0, 3, 4), strict=True)}
        assert select_lambda(scores) == _argmax_first(scores)
    with pytest.raises(ValueError, match="no validation scores"):
        select_lambda({})


def _runs(ids, forgets, lams=("0.3", "1", "3", "10")):
    """``{λ key: {seed: record}}`` from per-λ (seed 0, seed 1) ID accuracies and forgettings;
    gray accuracy 90 − forgetting."""
    return {lam: {str(s): {"test": {"id_acc": i[s], "forgetting": f[s], "gray_acc": 90 - f[s]}}
                  for s in range(2)}
            for lam, i, f in zip(lams, ids, forgets, strict=True)}


def test_summary_statistics_against_numpy():
    """The chosen λ's metrics and every curve point: mean and (population) std of the seeds'
    records by NumPy; curves in increasing λ even when the runs come in another order (λ keys
    that sort differently as text)."""
    runs = {"wma_sd": _runs([(90, 92), (88, 91), (85, 87), (80, 84)],
                            [(10, 13), (6, 9), (4, 4), (1, 2)])}
    shuffled = {"wma_sd": {k: runs["wma_sd"][k] for k in ("3", "10", "0.3", "1")}}
    summary = summarize(shuffled, {"wma_sd": {"key": "3"}},
                        {"0": {"test": {"id_acc": 95, "forgetting": 40, "gray_acc": 50}},
                         "1": {"test": {"id_acc": 97, "forgetting": 43, "gray_acc": 47}}})
    row = summary["strategies"]["wma_sd"]
    assert list(row["curve"]) == ["0.3", "1", "3", "10"]
    assert row["lam"] == 3.0 and row["key"] == "3" and row["chosen"] == row["curve"]["3"]
    for lam, per_seed in runs["wma_sd"].items():
        for metric in ("id_acc", "forgetting", "gray_acc"):
            values = [per_seed[s]["test"][metric] for s in ("0", "1")]
            got = row["curve"][lam][metric]
            assert got["seeds"] == values and got["seed_ids"] == ["0", "1"]
            assert got["mean"] == np.mean(values) and got["std"] == np.std(values)
    assert summary["direct"]["forgetting"] == {"mean": 41.5, "std": 1.5, "seeds": [40, 43],
                                               "seed_ids": ["0", "1"]}
    # the target is the reference's chosen seed-mean ID accuracy, (85 + 87)/2; its row, its own
    assert summary["equal_id"]["id_acc"] == 86.0
    assert summary["equal_id"]["strategies"]["wma_sd"]["forgetting"] == row["chosen"][
        "forgetting"]


def test_the_reference_is_its_own_chosen_point_not_an_interpolation():
    """WMA's curve reaches its chosen ID accuracy (88, at λ = 3) first at λ ∈ (0.3, 1): it is
    reported at its own chosen point, forgetting (4, 6); EMA at ID 88 between λ = 0.3 (ID 90,
    forgetting (14, 16)) and 1 (ID 86, (10, 12)), half-way: (12, 14)."""
    runs = {"wma_sd": _runs([(90, 90), (86, 86), (88, 88), (80, 80)],
                            [(10, 12), (6, 8), (4, 6), (1, 2)]),
            "ema_sd": _runs([(90, 90), (86, 86), (84, 84), (80, 80)],
                            [(14, 16), (10, 12), (8, 8), (5, 5)])}
    selection = {"wma_sd": {"key": "3"}, "ema_sd": {"key": "0.3"}}
    equal = summarize(runs, selection)["equal_id"]
    assert equal["id_acc"] == 88 and equal["reference"] == "wma_sd" and equal["reference_lam"] == 3
    wma, ema = equal["strategies"]["wma_sd"], equal["strategies"]["ema_sd"]
    assert wma["reference"] is True and wma["forgetting"]["seeds"] == [4, 6]
    assert wma["weight"] == 0 and wma["between"] == ["3"] and wma["lam"] == 3
    assert ema["forgetting"]["seeds"] == [12.0, 14.0] and ema["weight"] == 0.5
    # another reference: EMA's chosen λ = 0.3, ID 90
    other = summarize(runs, selection, reference="ema_sd")["equal_id"]
    assert other["id_acc"] == 90 and other["strategies"]["wma_sd"]["forgetting"]["seeds"] == [
        10, 12]


def test_verdicts_pair_the_seeds_by_hand():
    """Designed vs WMA at equal ID (89, WMA's λ = 1: forgetting (6, 8)): designed half-way
    between λ = 0.3 and 1, (½·6 + ½·4, ½·7 + ½·5) = (5, 6): differences (−1, −2) → "less",
    −1.5 ± 0.5; a seed the other way → "not clearly different"; every seed higher → "more";
    one seed equal → not "more"."""
    wma = _runs([(90, 92), (88, 90), (85, 87), (80, 80)], [(10, 12), (6, 8), (4, 4), (1, 1)])

    def words(designed_forgets):
        runs = {"wma_sd": wma,
                "designed_sd": _runs([(90, 90), (88, 88), (84, 86), (80, 80)],
                                     designed_forgets)}
        selection = {n: {"key": "1"} for n in runs}
        lines = verdicts(summarize(runs, selection))
        return next(v for v in lines if v.startswith("designed-kernel SD vs WMA"))

    less = words([(6, 7), (4, 5), (2, 3), (1, 1)])
    assert "5.50 ± 0.50" in less and "7.00 ± 1.00" in less
    assert "difference -1.50 ± 0.50 (lower on 2/2 seeds)" in less
    assert less.endswith("forgets less")
    unclear = words([(6, 7), (4, 11), (2, 3), (1, 1)])
    assert "(lower on 1/2 seeds)" in unclear and unclear.endswith("is not clearly different")
    more = words([(6, 7), (8, 11), (2, 3), (1, 1)])
    assert "(lower on 0/2 seeds)" in more and more.endswith("forgets more")
    tied = words([(6, 7), (6, 11), (2, 3), (1, 1)])  # one seed equal: not "more"
    assert tied.endswith("is not clearly different")


def _hand_payload():
    """Four strategies at λ = 0.3, 1, 3 (two seeds), each chosen at λ = 1, and Direct FT."""
    ids = {"wma_sd": [(90, 92), (88, 90), (85, 87)], "ema_sd": [(92, 94), (90, 90), (86, 88)],
           "designed_sd": [(90, 90), (87, 89), (84, 86)],
           "replay_sd": [(95, 95), (94, 94), (93, 93)]}
    forgets = {"wma_sd": [(10, 12), (6, 8), (4, 4)], "ema_sd": [(14, 16), (10, 12), (8, 8)],
               "designed_sd": [(6, 7), (4, 5), (2, 3)], "replay_sd": [(1, 1), (1, 1), (1, 1)]}
    runs = {n: _runs(ids[n], forgets[n], lams=("0.3", "1", "3")) for n in ids}
    scores = {lam: {"score": 50.0} for lam in ("0.3", "1", "3")}
    selection = {name: {"key": "1", "lam": 1.0, "scores": scores} for name in runs}
    direct = {"0": {"test": {"id_acc": 95, "forgetting": 40, "gray_acc": 50}},
              "1": {"test": {"id_acc": 96, "forgetting": 42, "gray_acc": 48}}}
    summary = summarize(runs, selection, direct)
    return {"summary": summary, "selection": selection, "verdicts": verdicts(summary),
            "config": {"seeds": [0, 1]}}


def test_summary_verdicts_table_and_figure_by_hand():
    """Equal ID 89 (WMA at λ = 1): EMA's IDs 90 → 87 between λ = 1 and 3, t = 1/3:
    ⅔·(10, 12) + ⅓·(8, 8) = (28/3, 32/3), 10 ± ⅔, λ = 3^⅓; designed 90 → 88 half-way:
    (5, 6); replay never falls to 89 (not compared)."""
    payload = _hand_payload()
    summary = payload["summary"]
    assert summary["direct"]["forgetting"]["mean"] == 41
    rows = summary["equal_id"]["strategies"]
    ema = rows["ema_sd"]
    assert ema["between"] == ["1", "3"] and ema["weight"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(ema["forgetting"]["seeds"], [28 / 3, 32 / 3])
    assert ema["forgetting"]["std"] == pytest.approx(2 / 3)
    assert ema["lam"] == pytest.approx(3 ** (1 / 3))
    np.testing.assert_allclose(rows["designed_sd"]["forgetting"]["seeds"], [5, 6])
    assert rows["replay_sd"]["forgetting"] is None and rows["replay_sd"]["id_range"] == [93, 95]
    lines = payload["verdicts"]
    vs_ema = next(v for v in lines if v.startswith("designed-kernel SD vs EMA"))
    assert "10.00 ± 0.67" in vs_ema and vs_ema.endswith("forgets less")
    assert ("Answer: designed-kernel SD forgets less at equal ID accuracy than WMA SD "
            "Beta(0.5, 0.5) and EMA SD (0.99)") in lines
    replay = [v for v in lines if v.startswith("replay SD vs")]
    assert len(replay) == 2 and all("not comparable" in v and "[93.00, 95.00]" in v
                                    for v in replay)
    assert "forgets less at equal ID accuracy than none of them" in lines[-1]
    text = format_teachers(payload)
    assert "designed-kernel SD" in text and "5.50 ± 0.50" in text
    result = teachers_figure(payload)
    assert result.agrees and "less than WMA SD" in result.finding
    # without replay-SD: not run, said so
    runs = {n: v for n, v in summary["strategies"].items() if n != "replay_sd"}
    assert "replay SD: not run" in verdicts({**summary, "strategies": runs,
                                             "equal_id": {**summary["equal_id"], "strategies": {
                                                 n: rows[n] for n in runs}}})


def _ranks(values):
    """Ranks 1..n, ties given their average rank."""
    values = np.asarray(values, float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def spearman(a, b):
    """Spearman's ρ: the Pearson correlation of the ranks."""
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def test_linear_check_against_ranks_by_hand():
    """The measured value of each point is its seed-mean forgetting (Direct FT's for λ None);
    ρ by ranks computed here, ties included."""
    runs = {"wma_sd": _runs([(90, 92), (88, 90), (85, 87), (80, 80)],
                            [(10, 12), (6, 8), (4, 4), (1, 1)]),
            "replay_sd": _runs([(95, 95), (94, 94), (93, 93), (90, 90)],
                               [(3, 5), (4, 4), (1, 1), (2, 2)])}
    direct = {"0": {"test": {"id_acc": 95, "forgetting": 40, "gray_acc": 50}},
              "1": {"test": {"id_acc": 96, "forgetting": 42, "gray_acc": 48}}}
    summary = summarize(runs, {n: {"key": "1"} for n in runs}, direct)
    lams = (0.3, 1.0, 3.0, 10.0)
    points = [{"strategy": n, "lam": lam, "linear_forgetting": lf, "predicted_drop": pd}
              for n, lf_pd in (("wma_sd", [(9, 1.0), (7, 2.0), (5, 2.0), (2, 0.5)]),
                               ("replay_sd", [(4, 3.0), (4, 1.0), (1, 0.0), (3, 0.5)]))
              for lam, (lf, pd) in zip(lams, lf_pd, strict=True)]
    points.append({"strategy": "direct", "lam": None, "linear_forgetting": 50,
                   "predicted_drop": 4.0})
    check = linear_check(points, summary, 64)
    measured = [11, 7, 4, 1, 4, 4, 1, 2, 41]
    assert [r["measured"] for r in check["points"]] == measured
    for key in ("linear_forgetting", "predicted_drop"):
        expected = spearman([p[key] for p in points], measured)
        assert check["spearman"][key] == pytest.approx(expected, rel=1e-12)
        assert f"{expected:+.2f}" in check["sentence"]
    assert "on 64 gray pretraining images" in check["sentence"]
