"""Every registered claim, every case: the same registry that `tracer-theory verify` runs."""

import pytest

from tracer_theory.claims.registry import claim_cases, claims


@pytest.mark.parametrize(("claim_id", "case"), claim_cases())
def test_claim(claim_id, case):
    rows = claims()[claim_id].run(case)
    assert rows, f"{claim_id}/{case} measured nothing"
    failed = [f"{r.quantity}: {r.value:.3e} not {r.relation} {r.bound:.1e} {r.note}"
              for r in rows if not r.passed]
    assert not failed, "\n".join(failed)


def test_registry_lists_each_claim_once_in_order():
    from tracer_theory.claims.registry import CLAIMS

    ids = [c.id for c in CLAIMS]
    assert len(set(ids)) == len(ids) and list(claims()) == ids
    assert {"C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"} <= set(ids)


def test_row_relations():
    from tracer_theory.claims.registry import Row

    assert Row("C", "c", "q", 1e-9, 1e-8).passed and not Row("C", "c", "q", 1e-7, 1e-8).passed
    assert Row("C", "c", "q", 0.3, 0.1, relation=">=").passed
    assert not Row("C", "c", "q", 0.05, 0.1, relation=">=").passed
    assert not Row("C", "c", "q", float("nan"), 1.0).passed
