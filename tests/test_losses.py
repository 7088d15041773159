"""Losses and metrics of the deep experiments against hand-computed references (math module
loops written here, independent of the library)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracer_theory.deep import losses as L
from tracer_theory.deep.metrics import (
    argmax_agreement,
    expected_calibration_error,
    mean_kl,
    parameter_distance,
)

S_IMG = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
S_TXT = np.array([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
T_IMG = np.array([[0.6, 0.8], [1.0, 0.0], [0.8, -0.6]])
T_TXT = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
SCALE = 2.0


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def log_softmax_row(row):
    m = max(row)
    z = math.log(sum(math.exp(v - m) for v in row)) + m
    return [v - z for v in row]


def logits(a, b):
    return [[SCALE * dot(x, y) for y in b] for x in a]


def ce_diag(rows):
    return -sum(log_softmax_row(r)[i] for i, r in enumerate(rows)) / len(rows)


def transpose(rows):
    return [list(c) for c in zip(*rows, strict=True)]


def kl_rows(p_rows, q_rows):
    total = 0.0
    for p, q in zip(p_rows, q_rows, strict=True):
        lp, lq = log_softmax_row(p), log_softmax_row(q)
        total += sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True))
    return total / len(p_rows)


def test_clip_loss_hand_computed():
    m = logits(S_IMG, S_TXT)
    want = 0.5 * (ce_diag(m) + ce_diag(transpose(m)))
    assert float(L.clip_loss(jnp.asarray(S_IMG), jnp.asarray(S_TXT), SCALE)) == pytest.approx(want)
    swapped = L.clip_loss(jnp.asarray(S_TXT), jnp.asarray(S_IMG), SCALE)
    assert float(swapped) == pytest.approx(want)


def test_clip_loss_multi_positive():
    distinct = L.clip_loss(jnp.asarray(S_IMG), jnp.asarray(S_TXT), SCALE, labels=jnp.arange(3))
    assert float(distinct) == pytest.approx(float(L.clip_loss(jnp.asarray(S_IMG),
                                                              jnp.asarray(S_TXT), SCALE)))
    labels = [0, 0, 1]
    m = logits(S_IMG, S_TXT)

    def soft_ce(rows):
        out = 0.0
        for i, r in enumerate(rows):
            lp = log_softmax_row(r)
            pos = [j for j in range(3) if labels[j] == labels[i]]
            out -= sum(lp[j] for j in pos) / len(pos)
        return out / 3

    want = 0.5 * (soft_ce(m) + soft_ce(transpose(m)))
    got = L.clip_loss(jnp.asarray(S_IMG), jnp.asarray(S_TXT), SCALE, labels=jnp.asarray(labels))
    assert float(got) == pytest.approx(want)


def test_distillation_terms_hand_computed():
    args = [jnp.asarray(a) for a in (S_IMG, S_TXT, T_IMG, T_TXT)]
    fd = sum(sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
             for x, y in zip(S_IMG, T_IMG, strict=True)) / 3
    assert float(L.feature_distillation(args[0], args[2])) == pytest.approx(fd)
    t, s = logits(T_IMG, T_TXT), logits(S_IMG, S_TXT)
    crd = 0.5 * (kl_rows(t, s) + kl_rows(transpose(t), transpose(s)))
    assert float(L.contrastive_relational_distillation(*args, SCALE)) == pytest.approx(crd)
    icl = 0.5 * (ce_diag(logits(S_IMG, T_TXT)) + ce_diag(logits(S_TXT, T_IMG)))
    assert float(L.interactive_contrastive_loss(*args, SCALE)) == pytest.approx(icl)
    ckd = 0.5 * (kl_rows(logits(T_IMG, T_TXT), logits(S_IMG, T_TXT))
                 + kl_rows(logits(T_TXT, T_IMG), logits(S_TXT, T_IMG)))
    assert float(L.cross_knowledge_distillation(*args, SCALE)) == pytest.approx(ckd)
    fd_txt = sum(sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
                 for x, y in zip(S_TXT, T_TXT, strict=True)) / 3
    total, parts = L.multi_view_distillation((args[0], args[1]), (args[2], args[3]), SCALE)
    assert float(total) == pytest.approx(fd + fd_txt + crd + icl + ckd)
    distinct = L.interactive_contrastive_loss(*args, SCALE, labels=jnp.arange(3))
    assert float(distinct) == pytest.approx(icl)
    assert set(parts) == {"fd", "crd", "icl", "ckd"}


def test_distillation_vanishes_when_student_is_teacher():
    img, txt = jnp.asarray(T_IMG), jnp.asarray(T_TXT)
    for fn in (L.contrastive_relational_distillation, L.cross_knowledge_distillation):
        assert float(fn(img, txt, img, txt, SCALE)) == pytest.approx(0.0, abs=1e-12)
        assert float(fn(jnp.asarray(S_IMG), jnp.asarray(S_TXT), img, txt, SCALE)) > 0
    assert float(L.feature_distillation(img, img)) == 0.0


def test_kl_distillation_and_cross_entropy():
    s, t = np.array([[1.0, 2.0, 0.5]]), np.array([[0.2, 1.5, 1.0]])
    temp = 2.0
    want = temp**2 * kl_rows([list(t[0] / temp)], [list(s[0] / temp)])
    got = L.kl_distillation(jnp.asarray(s), jnp.asarray(t), temp)
    assert float(got) == pytest.approx(want)
    assert float(L.kl_distillation(jnp.asarray(s), jnp.asarray(s), temp)) == pytest.approx(0.0)
    ce = -log_softmax_row(list(s[0]))[1]
    assert float(L.cross_entropy(jnp.asarray(s), jnp.asarray([1]))) == pytest.approx(ce)


def test_cross_frobenius_matches_numpy():
    rng = np.random.default_rng(0)
    w_img, w_txt = rng.standard_normal((4, 6)), rng.standard_normal((4, 5))
    want = np.linalg.norm(w_img.T @ w_txt)
    assert float(L.cross_frobenius(jnp.asarray(w_img), jnp.asarray(w_txt))) == pytest.approx(want)


def test_huge_scale_stays_finite():
    img, txt = jnp.asarray(S_IMG), jnp.asarray(S_TXT)
    value, grad = jax.value_and_grad(lambda x: L.clip_loss(x, txt, 1e4))(img)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    total, _ = L.multi_view_distillation((img, txt), (jnp.asarray(T_IMG), jnp.asarray(T_TXT)),
                                         1e4)
    assert np.isfinite(float(total))


def test_ece_worked_example():
    # Six predictions, 15 bins of width 1/15. Confidences and correctness:
    #   0.95 ✓, 0.95 ✗  → bin 15: conf 0.95, acc 0.5 → |0.5 − 0.95| · 2/6 = 0.15
    #   0.55 ✓, 0.55 ✓, 0.55 ✗ → bin 9 (0.533, 0.6]: |2/3 − 0.55| · 3/6 = 0.058333…
    #   0.40 ✓ → bin 6 (0.333, 0.4]: |1 − 0.4| · 1/6 = 0.1
    # ECE = 0.308333…
    conf = [0.95, 0.95, 0.55, 0.55, 0.55, 0.40]
    correct = [True, False, True, True, False, True]
    probs, labels = [], []
    for c, ok in zip(conf, correct, strict=True):
        probs.append([c, (1 - c) / 2, (1 - c) / 2])  # class 0 stays the argmax
        labels.append(0 if ok else 1)
    ece = expected_calibration_error(jnp.asarray(probs), jnp.asarray(labels))
    assert float(ece) == pytest.approx(0.15 + (2 / 3 - 0.55) * 3 / 6 + 0.1)


def test_ece_edge_cases():
    probs = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    assert float(expected_calibration_error(probs, jnp.asarray([1, 0]))) == pytest.approx(1.0)
    assert float(expected_calibration_error(probs, jnp.asarray([0, 1]))) == pytest.approx(0.0)


def test_gap_metrics():
    a = jnp.asarray([[2.0, 0.0], [0.0, 1.0]])
    b = jnp.asarray([[1.0, 0.5], [2.0, 0.0]])
    assert float(argmax_agreement(a, b)) == pytest.approx(0.5)
    want = kl_rows([[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.5], [2.0, 0.0]])
    assert float(mean_kl(a, b)) == pytest.approx(want)
    tree_a = {"w": jnp.ones(3), "f": jax.nn.relu}
    tree_b = {"w": jnp.zeros(3), "f": jax.nn.relu}
    assert float(parameter_distance(tree_a, tree_b)) == pytest.approx(math.sqrt(3))
