"""The README's headline numbers are the committed results' numbers (computed here from the
JSON files, formatted as the README writes them)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RESULTS = ROOT / "experiments" / "results"


def _load(*parts):
    return json.loads(RESULTS.joinpath(*parts).read_text(encoding="utf-8"))


def test_toy_headline_is_the_committed_fair_head_table():
    summary = _load("toy", "fair_head.json")["summary"]
    direct = summary["direct"]["forgetting"]
    sd = " / ".join(f"{summary[n]['forgetting'][0]:.1f}" for n in ("static_sd", "ema_sd",
                                                                    "wma_sd"))
    expected = [f"Direct FT forgets {direct[0]:.1f} ± {direct[1]:.1f} points",
                f"static / EMA / WMA SD {sd}",
                f"L2-SP {summary['l2sp']['forgetting'][0]:.1f}"]
    text = " ".join(README.split())
    for phrase in expected:
        assert phrase in text, phrase


def test_horizon_headline_is_the_committed_study():
    runs = _load("horizon", "horizon.json")["summary"]["head_noise0.25"]
    ema, wma = runs["ema_sd"], runs["wma_sd"]
    first, last = min(ema, key=int), max(ema, key=int)
    expected = [f"rises from {ema[first]['forgetting']['mean']:.1f} to "
                f"{ema[last]['forgetting']['mean']:.1f} ± {ema[last]['forgetting']['std']:.1f}",
                f"WMA SD stays at {wma[last]['forgetting']['mean']:.1f} ± "
                f"{wma[last]['forgetting']['std']:.1f}", f"T = {int(last):,}"]
    text = " ".join(README.split())
    for phrase in expected:
        assert phrase in text, phrase
