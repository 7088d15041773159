"""The reproducibility envelope of toy results: how far a rerun that differs only in rounding
moves each number, and which figure verdicts it flips.

Finetuning is chaotic enough that a different CPU's vector kernels (AVX2 against AVX-512, say)
grow rounding differences into points of accuracy. ``measure`` compares two results folders of
``tracer-theory toy`` made by the same code and settings; its record, written as
``envelope.json`` beside the base results, names the base tables by their SHA-256, so that it
is never applied to other results. ``flipped`` reads it back for ``registry.make``: a toy
figure whose verdict differs between the two runs is *inconclusive*, whichever way it went.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import InputError

#: The file, beside the base results, that holds the envelope.
FILE = "envelope.json"
#: The toy tables compared (``tracer-theory toy``'s default plan).
TABLES = ("fair_head", "paper_head", "fair_prompts")
#: Metrics in points of accuracy (the ECEs, fractions, are left out).
METRICS = ("forgetting", "gray_acc", "id_acc", "ood_flipped_acc", "ood_neutral_acc")


def _table(folder: Path, name: str) -> tuple[dict[str, Any], str]:
    """A toy table and the SHA-256 of its file; ``InputError`` naming the file otherwise."""
    path = Path(folder) / f"{name}.json"
    try:
        raw = path.read_bytes()
        payload = json.loads(raw)
        if not isinstance(payload.get("runs"), dict) or not isinstance(payload.get("summary"),
                                                                       dict):
            raise ValueError("no 'runs' and 'summary'")
    except (OSError, ValueError, AttributeError) as err:
        raise InputError(f"{path} is no toy results table ({err})") from None
    return payload, hashlib.sha256(raw).hexdigest()


def differences(base: str | Path, other: str | Path) -> dict[str, dict[str, Any]]:
    """``{table: {metric: {"mean", "seed", "where"}}}``: the largest ``|difference|`` of a
    strategy's seed mean and of one seed's value (``where``: its ``[strategy, seed]``) over the
    strategies both folders ran, in points."""
    out: dict[str, dict[str, Any]] = {}
    for name in TABLES:
        (a, _), (b, _) = _table(Path(base), name), _table(Path(other), name)
        rows: dict[str, Any] = {}
        for metric in METRICS:
            worst_mean, worst_seed, where = 0.0, 0.0, None
            for strategy, per_seed in a["runs"].items():
                if metric not in a["summary"].get(strategy, {}) or strategy not in b["runs"]:
                    continue
                worst_mean = max(worst_mean, abs(a["summary"][strategy][metric][0]
                                                 - b["summary"][strategy][metric][0]))
                for seed, record in per_seed.items():
                    d = abs(record[metric] - b["runs"][strategy][seed][metric])
                    if d > worst_seed:
                        worst_seed, where = d, [strategy, seed]
            rows[metric] = {"mean": worst_mean, "seed": worst_seed, "where": where}
        out[name] = rows
    return out


def measure(base: str | Path, other: str | Path, label: str) -> dict[str, Any]:
    """The envelope record: ``label`` (what differs), the base tables' SHA-256, the
    ``differences`` and each toy figure's verdict from either folder (``flips``)."""
    from . import registry

    record: dict[str, Any] = {
        "label": label, "base": str(base), "other": str(other),
        "base_sha256": {name: _table(Path(base), name)[1] for name in TABLES},
        "differences": differences(base, other), "verdicts": {}}
    for figure in registry.FIGURES:
        if figure.toy_results is None:
            continue
        a, b = (figure.make(registry.toy.load_payload(f, figure.toy_results))
                for f in (base, other))
        record["verdicts"][figure.name] = {"base": a.agrees, "other": b.agrees,
                                           "flips": a.agrees != b.agrees}
    return record


def flipped(folder: str | Path) -> dict[str, str]:
    """``{figure name: reason}`` for the toy figures whose verdict flips within the envelope
    recorded beside the results in ``folder``; empty when there is none or it was measured
    for other results (a table's SHA-256 differs)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        digests, verdicts, label = record["base_sha256"], record["verdicts"], record["label"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is no reproducibility envelope ({err})") from None
    for name, digest in digests.items():
        table = Path(folder) / f"{name}.json"
        if not table.is_file() or hashlib.sha256(table.read_bytes()).hexdigest() != digest:
            return {}
    return {name: f"the verdict flips on a rerun that differs only in rounding ({label}; "
                  f"{path.name})"
            for name, v in verdicts.items() if v.get("flips")}
