"""`tracer-theory figures`: writes exactly the files figures/README.md lists, deterministically,
from any working directory; every figure's computed verdict is what its numbers give."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from checkout import copy_environment, git_copy, require_git, untracked_or_modified

from tracer_theory import _paths, cases, cli
from tracer_theory.report import registry, toy

ROOT = Path(__file__).resolve().parents[1]
THEORY = [f.name for f in registry.FIGURES if f.toy_results is None]
PAPER_TABLE = ("toy_fair_head", "toy_paper_head", "toy_fair_prompts")


def test_figures_command_works_outside_the_checkout(tmp_path, monkeypatch, capsys,
                                                   theory_results):
    """Run from a working directory outside the repository: the committed toy results are found
    from the package's location, and exactly the listed files are written. (The theory
    figures' results are the module's, computed once: ``registry.make`` is deterministic, see
    ``test_figures_are_deterministic``; the command saves them and builds the toy figures.)"""
    out = tmp_path / "figs"
    make = registry.make
    monkeypatch.setattr(registry, "make", lambda name, **kw: theory_results[name]
                        if name in theory_results else make(name, **kw))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["figures", "--quick", "--quiet", "--out", "figs"]) == 0
    stdout = capsys.readouterr().out
    listed = registry.listed_files((ROOT / "figures" / "README.md").read_text())
    written = {p.name for p in out.iterdir()} - {"README.md"}
    assert written == listed
    assert len(listed) == 2 * len(registry.FIGURES)
    # the committed README is the generated one, and so are the committed figures' names
    assert (out / "README.md").read_text() == (ROOT / "figures" / "README.md").read_text()
    assert {p.name for p in (ROOT / "figures").iterdir()} - {"README.md"} == listed
    for figure in registry.FIGURES:
        assert figure.name in stdout


def test_figures_are_deterministic(tmp_path):
    paths = [registry.show("wma_kernel", quick=True, out=tmp_path / name)[1] for name in "ab"]
    for first, second in zip(*paths, strict=True):
        assert first.read_bytes() == second.read_bytes()


def test_unknown_figure_and_missing_toy_results_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown figure 'nope'"):
        registry.make("nope")
    with pytest.raises(FileNotFoundError, match=r"run `tracer-theory toy.*--toy-results"):
        registry.make("toy_fair_head", toy_results=tmp_path)


def test_missing_reference_results_name_the_path_and_the_flag(tmp_path, monkeypatch, capsys):
    """Outside a checkout the reference run is missing: the command fails before writing any
    figure, naming the path it looked for and the flag that replaces it."""
    monkeypatch.setattr(_paths, "REPO_ROOT", tmp_path / "site-packages")
    missing = tmp_path / "site-packages" / _paths.TOY_RESULTS_IN_REPO
    code = cli.main(["figures", "--quick", "--quiet", "--out", str(tmp_path / "figs")])
    assert code == 3  # an input error
    err = capsys.readouterr().err
    assert str(missing) in err and "--toy-results" in err
    assert not (tmp_path / "figs").exists()


# --- every log axis spans the data on it ---------------------------------------------------------

def _log_axes_span_their_data(fig) -> list[str]:
    """Log axes whose limits reach more than two decades beyond the plotted lines' positive
    values, or that plot non-positive values (which a log axis cannot show)."""
    problems = []
    for ax in fig.axes:
        for axis, scale, limits in (("x", ax.get_xscale(), ax.get_xlim()),
                                    ("y", ax.get_yscale(), ax.get_ylim())):
            if scale != "log":
                continue
            values = np.concatenate([np.asarray(line.get_xdata() if axis == "x"
                                                else line.get_ydata(), float).ravel()
                                     for line in ax.get_lines()] or [np.array([])])
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            if np.any(values <= 0):
                problems.append(f"{ax.get_title()!r}: non-positive {axis} values on a log axis")
            positive = values[values > 0]
            if limits[0] < positive.min() / 100 or limits[1] > positive.max() * 100:
                problems.append(f"{ax.get_title()!r}: {axis} limits {limits} for data "
                                f"{positive.min():.2g}..{positive.max():.2g}")
    return problems


# --- theory figures (quick mode): the verdict is what the numbers give ----------------------------

@pytest.fixture(scope="module")
def theory_results():
    return {name: registry.make(name, quick=True) for name in THEORY}


def _closed_forms_agree(data):
    return max(data[k] for k in ("direct", "l2sp", "static_sd", "weight_decay")) < 1e-6


def _decomposition_agrees(data):
    names, orth = data["names"], np.asarray(data["orthogonal"])
    others = orth[[n != "weight_decay" for n in names]]
    return bool(others.max() < 1e-12 < orth[names.index("weight_decay")])


def _filter_factors_agree(data):
    s = np.asarray(data["sigma_sq"])
    return bool(np.allclose(data["static_sd"], 0.5, rtol=0, atol=1e-12)
                and np.allclose(data["l2sp"], s / (s + 1.0), rtol=0, atol=1e-12)
                and np.mean(data["wma_sd"]) < np.mean(data["ema_sd"]))


def _wma_kernel_agrees(data):
    kappa = data["kappa"] / data["kappa"].sum()
    early = int(0.1 * (len(kappa) - 1)) + 1
    return bool(np.max(np.abs(data["weights_wma_sd"] - kappa)) < 1e-10
                and data["weights_wma_sd"][:early].sum() > 0.1
                > data["weights_ema_sd"][:early].sum())


def _teacher_gap_agrees(data):
    ema, wma = data["gaps"]["ema_sd(0.99)"], data["gaps"]["wma_sd"]
    return bool(ema[-1] / ema.max() < 1e-3 and wma[len(wma) // 2] / wma.max()
                > cases.GAP_FRACTION)


def _bias_vs_horizon_agrees(data):
    return all(abs(slope - (-1 / (2 * (1 + lam)))) < cases.EXPONENT_TOL
               for lam, (slope, _) in data["fits"].items())


def _sweep_agrees(data):
    return bool(np.all(np.diff(data["bias"], axis=1) <= 1e-12)
                and data["gap_at_half"].min() > cases.GAP_FRACTION)


def _kernels_agree(data):
    return max(data["final_bias"], key=data["final_bias"].get) == "Beta(0.5,0.5)"


THEORY_CHECKS = {
    "contrastive_target": lambda d: np.allclose(d["trace"], d["lstsq"], rtol=1e-10, atol=1e-10),
    "closed_forms_gd": _closed_forms_agree,
    "decomposition": _decomposition_agrees,
    "filter_factors": _filter_factors_agree,
    "wma_kernel": _wma_kernel_agrees,
    "teacher_gap": _teacher_gap_agrees,
    "bias_vs_horizon": _bias_vs_horizon_agrees,
    "sweep_heatmap": _sweep_agrees,
    "kernels": _kernels_agree,
}


def test_every_theory_figure_has_a_verdict_check():
    assert set(THEORY_CHECKS) == set(THEORY)


@pytest.mark.parametrize("name", THEORY)
def test_theory_verdict_is_what_the_numbers_give(name, theory_results):
    result = theory_results[name]
    assert result.agrees == bool(THEORY_CHECKS[name](result.data))
    assert ("They agree." in result.report()) == result.agrees
    assert not _log_axes_span_their_data(result.figure)


def test_teacher_gap_starts_at_zero_and_is_plotted_from_its_first_positive_step(theory_results):
    result = theory_results["teacher_gap"]
    assert all(gap[0] == 0 for gap in result.data["gaps"].values())  # T_0 = W_0
    ax, = result.figure.axes
    smallest = min(gap[gap > 0].min() for gap in result.data["gaps"].values())
    assert ax.get_ylim()[0] >= smallest / 100


# --- toy figures (the committed 3-seed run): verdicts against the paper's table -------------------

@pytest.fixture(scope="module")
def toy_results():
    return {f.name: (registry.make(f.name), toy.load_payload(_paths.reference_toy_results(),
                                                              f.toy_results))
            for f in registry.FIGURES if f.toy_results is not None}


def _mean_std(payload, strategy, metric="forgetting"):
    return tuple(payload["summary"][strategy][metric])


@pytest.mark.parametrize("name", PAPER_TABLE)
def test_toy_finding_states_the_papers_numbers_beside_ours(name, toy_results):
    result, payload = toy_results[name]
    text = result.claim + " " + result.finding
    for strategy, paper in toy.PAPER_TOY.forgetting.items():
        mean, std = _mean_std(payload, strategy)
        assert f"{mean:.1f} ± {std:.1f} vs {paper:g}" in result.finding
    assert f"vs {toy.PAPER_TOY.pretrained_zero_shot:g}%" in result.finding
    assert f"m = {toy.PAPER_TOY.dynamic_momentum:g}" in text


@pytest.mark.parametrize("name", PAPER_TABLE)
def test_toy_ordering_verdict_follows_the_measured_means(name, toy_results):
    result, payload = toy_results[name]
    order = list(toy.PAPER_TOY.forgetting)  # the paper's: most forgetting first
    means = [_mean_std(payload, n)[0] for n in order]
    violated = [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))
                if means[i] <= means[j]]
    assert ("ordering: disagrees" in result.finding) == bool(violated)
    assert ("ordering: agrees" in result.finding) == (not violated)
    assert result.data["ordering"] == (not violated)
    assert set(result.data["violations"]) == set(violated)


@pytest.mark.parametrize("name", PAPER_TABLE)
def test_toy_magnitude_verdict_follows_the_seed_spread(name, toy_results):
    result, payload = toy_results[name]
    pairs = [(_mean_std(payload, n), paper) for n, paper in toy.PAPER_TOY.forgetting.items()]
    pairs.append((_mean_std(payload, "pretrained", "gray_acc"),
                  toy.PAPER_TOY.pretrained_zero_shot))
    match = all(abs(m - paper) <= toy.MATCH_STDS * s for (m, s), paper in pairs)
    assert result.data["magnitudes"] == match
    assert f"magnitudes (match: within {toy.MATCH_STDS:g} std over seeds): " \
           f"{'agrees' if match else 'disagrees'}" in result.finding


def test_committed_toy_runs_disagree_with_the_papers_table(toy_results):
    """In every committed run L2-SP forgets less than static SD, against the paper's ordering,
    so no toy figure may say it agrees."""
    for name in PAPER_TABLE:
        result, payload = toy_results[name]
        assert _mean_std(payload, "l2sp")[0] < _mean_std(payload, "static_sd")[0]
        assert ("l2sp", "static_sd") in result.data["violations"]
        assert not result.agrees and "They disagree." in result.report()


@pytest.mark.parametrize("name", ["toy_fair_head", "toy_fair_prompts"])
def test_wma_that_only_ties_ema_is_not_an_agreement(name, toy_results):
    result, payload = toy_results[name]
    (wma, wma_std), (ema, ema_std) = _mean_std(payload, "wma_sd"), _mean_std(payload, "ema_sd")
    tie = abs(wma - ema) <= toy.MATCH_STDS * max(wma_std, ema_std)
    assert tie  # the committed runs: WMA and EMA forget alike
    assert result.data["wma_vs_ema"] == "tie"
    assert "WMA vs EMA: disagrees" in result.finding


def _synthetic_payload(forgetting: dict[str, tuple[float, float]]) -> dict:
    metrics = {metric: [50.0, 1.0] for metric, _ in toy.PANELS}
    summary = {"pretrained": {"gray_acc": [toy.PAPER_TOY.pretrained_zero_shot, 0.2]}}
    for name, stat in forgetting.items():
        summary[name] = {**metrics, "forgetting": list(stat)}
    return {"config": {"protocol": "fair", "objective": "head", "seeds": [0, 1, 2]},
            "summary": summary, "runs": {}}


def test_a_run_that_reproduces_the_table_agrees():
    paper = toy.PAPER_TOY.forgetting
    result = toy.summary_figure(_synthetic_payload(
        {**{n: (v + 0.05, 0.05) for n, v in paper.items()}, "wma_sd": (0.0, 0.01)}))
    assert result.agrees
    assert "ordering: agrees" in result.finding and "magnitudes" in result.finding
    assert "disagrees" not in result.finding


def test_a_run_with_the_right_ordering_but_wrong_sizes_disagrees_on_magnitudes_only():
    scaled = {n: (2 * v + 5, 0.5) for n, v in toy.PAPER_TOY.forgetting.items()}
    result = toy.summary_figure(_synthetic_payload(scaled))
    assert result.data["ordering"] and not result.data["magnitudes"]
    assert "ordering: agrees" in result.finding
    assert "magnitudes (match: within" in result.finding and not result.agrees


def test_gap_curves_verdict_needs_wma_beyond_the_seed_spread(toy_results):
    """The figure's own verdict (``registry.make`` then applies the rerun envelope: see
    tests/test_envelope.py)."""
    payload = toy_results["toy_gap_curves"][1]
    result = toy.gap_curves_figure(payload)
    kept = {n: [r["gap"]["logit_kl"]["final_over_peak"] for r in payload["runs"][n].values()]
            for n in ("ema_sd", "wma_sd")}
    (ema, ema_std), (wma, wma_std) = ((np.mean(v), np.std(v)) for v in kept.values())
    assert result.agrees == (wma - ema > toy.MATCH_STDS * max(ema_std, wma_std))
    assert f"WMA SD {wma:.2f} ± {wma_std:.2f}" in result.finding
    assert ("disagrees" in result.finding) == (not result.agrees)
    assert not _log_axes_span_their_data(result.figure)


def test_decomposition_leaves_out_strategies_that_do_not_move_the_projection(toy_results):
    result, payload = toy_results["toy_decomposition"]
    still = {n for n, v in payload["summary"].items() if "proj_task_change" in v
             and v["proj_task_change"][0] == 0 and v["proj_orthogonal_change"][0] == 0}
    assert set(result.data["unchanged"]) == still
    assert not still & set(result.data["share"])
    shares = {n: v for n, v in result.data["share"].items() if n != "weight_decay"}
    assert result.agrees == all(m <= toy.MATCH_STDS * s for m, s in shares.values())


def test_reproduce_runs_every_stage_and_summarizes(tmp_path, monkeypatch, capsys):
    """The wiring of `tracer-theory reproduce`, with each stage replaced by a cheap stand-in
    (the stages themselves are tested on their own): claims → toy plans → figures → summary."""
    from tracer_theory.claims.registry import Row
    from tracer_theory.deep.studies import experiment

    calls = {"toy": []}
    from tracer_theory.claims import registry as claim_registry

    monkeypatch.setattr(claim_registry, "claim_cases",
                        lambda ids=None: [("C1", "a"), ("C1", "b")])

    def claims(ids=None, progress=None):
        progress("C1", "a")
        return [Row("C1", "a", "q", 0.0, 1.0), Row("C1", "b", "q", 2.0, 1.0)]

    def run_experiment(config, out, progress=True):
        calls["toy"].append(config.name)
        return toy.load_payload(_paths.reference_toy_results(), config.name)

    def generate(out, quick=False, toy_results=None):
        calls["figures"] = (out, quick, toy_results)
        figure = registry.spec("toy_fair_head")
        result = registry.make("toy_fair_head")
        yield figure, result, []

    monkeypatch.setattr(claim_registry, "run_claims", claims)
    monkeypatch.setattr(experiment, "run_experiment", run_experiment)
    monkeypatch.setattr(registry, "generate", generate)
    code = cli.main(["reproduce", "--quiet", "--toy-out", str(tmp_path / "toy"),
                     "--figures", str(tmp_path / "figs")])
    text = capsys.readouterr().out
    assert code == 1  # one claim row failed
    assert "1/2 rows PASS" in text and "FAIL C1 b" in text
    assert calls["toy"] == ["fair_head", "paper_head", "fair_prompts"]
    assert calls["figures"] == (str(tmp_path / "figs"), False, str(tmp_path / "toy"))
    assert "toy_fair_head" in text and "== toy fair_prompts" in text
    # it says where every file went
    assert f"{tmp_path / 'toy'}/" in text.splitlines()[-1]
    assert f"{tmp_path / 'figs'}/" in text.splitlines()[-1]


def test_reproduce_and_toy_write_nothing_git_tracks_by_default():
    """Their default folders are ignored by git (the committed figures change only when asked)."""
    require_git()
    args = cli.build_parser().parse_args(["reproduce"])
    toy_args = cli.build_parser().parse_args(["toy"])  # its figures: OUT/figures
    for folder in (args.figures, args.toy_out, toy_args.out):
        probe = f"{folder}/any_file.png"
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{probe} would be tracked"



@pytest.mark.slow
def test_reproduce_quick_in_a_copy_leaves_git_status_clean(tmp_path):
    """`tracer-theory reproduce --quick` end to end, as a user runs it, in a copy of the checkout
    (about 2.5 minutes on 2 cores): it writes only to ignored folders and says where."""
    copy = git_copy(tmp_path / "checkout")
    done = subprocess.run("tracer-theory reproduce --quick", shell=True, cwd=copy,
                          env=copy_environment(copy), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert untracked_or_modified(copy) == ""
    assert "wrote: " in done.stdout and "[--quick: a smoke run" in done.stdout
    figures = {p.name for p in (copy / "results" / "figures").iterdir()}
    assert {f"{figure.name}.png" for figure in registry.FIGURES} <= figures
    assert (copy / "results" / "toy").is_dir()
