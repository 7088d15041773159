"""`tracer-theory verify`: the table, the JSON rows and the exit code."""

import json
import subprocess
import sys

import pytest

from tracer_theory import cli
from tracer_theory.claims import registry


def test_verify_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert cli.main(["verify", "--claims", "C1", "C6", "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "FAIL" not in text and "C6" in text
    data = json.loads(out.read_text())
    assert data["passed"] is True
    assert {r["claim"] for r in data["rows"]} == {"C1", "C6"}
    cases = {r["case"] for r in data["rows"]}
    assert {"n<d_I", "n>d_I", "rank-deficient"} <= cases
    # the JSON holds exactly the rows the table printed
    assert len(data["rows"]) == sum(line.startswith(("C1 ", "C6 ")) for line in text.splitlines())


def test_verify_exits_1_on_a_failing_claim(monkeypatch, capsys):
    def check(case):
        return [registry.Row("CX", case, "always off", 1.0, 1e-3)]

    table = dict(registry.claims())
    table["CX"] = registry.Claim("CX", "a claim that fails", ("only",), check)
    monkeypatch.setattr(registry, "claims", lambda: table)
    assert cli.main(["verify", "--claims", "CX", "--quiet"]) == 1
    assert "FAIL" in capsys.readouterr().out


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a new interpreter; asserts it exited 0 (its stderr's tail otherwise)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_help_of_every_command_loads_neither_jax_nor_matplotlib():
    """`tracer-theory --help` and each subcommand's `--help`, in a fresh interpreter: the
    commands' heavy imports wait for the command to run (and `import tracer_theory` is lazy)."""
    code = "\n".join([
        "import sys",
        "import tracer_theory, tracer_theory.cli as cli",
        "parser = cli.build_parser()",
        "commands = list(parser._subparsers._group_actions[0].choices)",
        "assert len(commands) >= 10, commands",
        "for argv in [[], *([c] for c in commands)]:",
        "    try:",
        "        parser.parse_args([*argv, '--help'])",
        "    except SystemExit as e:",
        "        assert e.code == 0, argv",
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in",
        "               ('jax', 'jaxlib', 'matplotlib', 'equinox', 'numpy', 'scipy'))",
        "assert not heavy, heavy",
        "assert 'solve' in tracer_theory.__all__ and callable(tracer_theory.solve)",
        "assert 'jax' in sys.modules  # a public name, once used, loads its module",
    ])
    run = _fresh_python(code)
    assert "finetune" in run.stdout and "--strategies" in run.stdout


def test_unknown_claim_is_a_clear_error(capsys):
    assert cli.main(["verify", "--claims", "C99", "--quiet"]) == 2
    assert "unknown claim ids ['C99']" in capsys.readouterr().err


def test_verify_imports_neither_matplotlib_nor_the_figures():
    """`tracer-theory verify` needs no plotting: in a fresh interpreter, importing the CLI and
    verifying a claim loads neither matplotlib nor tracer_theory.report."""
    code = "\n".join([
        "import sys",
        "import tracer_theory.cli",
        "assert tracer_theory.cli.main(['verify', '--claims', 'C6', '--quiet']) == 0",
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'",
        "                or m.startswith('tracer_theory.report'))",
        "assert 'matplotlib' not in sys.modules and not loaded, loaded",
    ])
    run = _fresh_python(code)
    assert "C6" in run.stdout and "FAIL" not in run.stdout


@pytest.mark.parametrize("command", ["toy", "horizon", "budget", "pareto", "reproduce"])
def test_a_quick_run_is_labelled_a_smoke_run_before_and_after(command, monkeypatch, capsys):
    """The banner frames the command's own output; without ``--quick`` there is none."""
    monkeypatch.setattr(cli, f"_{command}", lambda args: print("TABLE") or 0)
    assert cli.main([command, "--quick"]) == 0
    assert capsys.readouterr().out.split("\n")[:3] == [cli.SMOKE, "TABLE", cli.SMOKE]
    assert cli.main([command]) == 0
    assert cli.SMOKE not in capsys.readouterr().out


def test_an_unknown_public_name_is_an_attribute_error_naming_it():
    import tracer_theory

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tracer_theory.nope  # noqa: B018
    assert "nope" not in dir(tracer_theory) and "spectral_dynamics" in dir(tracer_theory)
