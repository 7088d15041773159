"""Every registered claim, every case: the same registry that `tracer-theory verify` runs."""

import pytest

from tracer_theory.claims.registry import claim_cases, claims


@pytest.mark.parametrize(("claim_id", "case"), claim_cases())
def test_claim(claim_id, case):
    rows = claims()[claim_id].run(case)
    assert rows, f"{claim_id}/{case} measured nothing"
    failed = [f"{r.quantity}: {r.error:.3e} > {r.tolerance:.1e} {r.note}" for r in rows
              if not r.passed]
    assert not failed, "\n".join(failed)


def test_registry_knows_linear_claims():
    assert {"C1", "C2", "C3"} <= set(claims())
