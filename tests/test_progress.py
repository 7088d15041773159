"""Progress bars (``tracer_theory._progress``): tqdm on a terminal, one line per finished unit
elsewhere, inner bars silent off a terminal, and an estimate from this process's units only."""

import io
import itertools

from tracer_theory import _progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_each_unit_is_one_plain_line_and_inner_bars_are_silent(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "ipykernel", raising=False)
    out = io.StringIO()
    clock = itertools.chain([100.0, 110.0, 130.0], itertools.repeat(130.0))  # start, 2 units
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: next(clock))
    with _progress.bar(total=5, initial=1, desc="runs", unit="run", file=out) as bar:
        bar.update()
        bar.set_postfix_str("seed 1")
        bar.update()
    # units 2 and 3 of 5 took 10 s and 20 s: 15 s each, two left; unit 1 was resumed
    assert out.getvalue().splitlines() == ["runs: 2/5 run, 10 s, ~30 s left",
                                           "runs: 3/5 run, 30 s, ~30 s left (seed 1)"]
    assert "\r" not in out.getvalue()
    inner = io.StringIO()
    with _progress.bar(total=100, desc="steps", leave=False, file=inner) as steps:
        steps.update(50)
    assert inner.getvalue() == ""
    assert list(_progress.bar(range(3), desc="items", file=io.StringIO())) == [0, 1, 2]


def test_on_a_terminal_it_is_tqdm_and_disable_silences_both():
    term = _Terminal()
    with _progress.bar(total=2, desc="runs", file=term) as bar:
        bar.update(2)
    assert "\r" in term.getvalue() and "runs" in term.getvalue()
    quiet = io.StringIO()
    with _progress.bar(total=2, desc="runs", file=quiet, disable=True) as bar:
        bar.update(2)
    assert quiet.getvalue() == ""
