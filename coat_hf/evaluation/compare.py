"""``python -m coat_hf.evaluation.compare BASELINE CANDIDATE``: does a new model beat a bundled one on every metric?

Both arguments are evaluation outputs (``results.json`` or its folder) of the same command on the same photos, one
per model. For every method row of the chosen family (default ``coat``: the n sweep) and every metric it reports,
the table gives both means, their difference and the difference's standard error over the paired images (the
same pairs in both runs), and marks the better side. The project replaces a bundled model only when the candidate is
better on every one (the model card's rule); the exit status says so: 0 when it is, 1 when it is not, 2 on bad
input (one line). At n = K no style vector reaches the output (it is the content's reconstruction), so the distances
to the style photo there are listed but not counted: a better reconstruction moves them away from the style.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from .report import RECONSTRUCTION_COLUMNS, TRANSFER_COLUMNS

PROG = "python -m coat_hf.evaluation.compare"

HIGHER_IS_BETTER = frozenset({"psnr"})
"""Metrics where more is better; lower is better for the rest (see ``report.py``'s arrows)."""

STYLE_DISTANCES = frozenset({"swd_vgg", "swd_lab", "local_color"})
"""Metrics that measure the result against the style photo: not counted in the rule at n = K."""

_COLUMNS = {key: (title, fmt) for key, title, fmt in (*TRANSFER_COLUMNS, *RECONSTRUCTION_COLUMNS)}


def load_results(path: str | Path) -> dict[str, Any]:
    """An evaluation's ``results.json``, given the file or its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not an evaluation's results.json (or its folder)")
    try:
        results = json.loads(path.read_text())
        _ = results["pairs"], results["reconstruction_images"], results["methods"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{str(path)!r} is not an evaluation's results.json ({type(err).__name__}: {err})") from None
    return results


def compare(baseline: dict[str, Any], candidate: dict[str, Any], family: str = "coat") -> list[dict[str, Any]]:
    """One row per (method, metric) of ``family`` in both runs, in the baseline's order: the means, the paired
    difference (candidate - baseline) with its standard error, whether the candidate is better (strictly) and
    whether the row counts in the rule (not the :data:`STYLE_DISTANCES` at n = K, read from the evaluation's config).
    Reconstruction metrics (the self pair, the same at every n) come once, with the first method that has them."""
    for key in ("pairs", "reconstruction_images"):
        if baseline[key] != candidate[key]:
            raise ValueError(f"the two evaluations used different {key.replace('_', ' ')}: run the same command "
                             "(data, seed, counts) for both models")
    theirs = {method["name"]: method for method in candidate["methods"]}
    k = baseline.get("config", {}).get("num_modulation_layers")
    rows, reconstruction_seen = [], set()
    for method in baseline["methods"]:
        other = theirs.get(method["name"])
        if method["family"] != family or other is None:
            continue
        for part in ("transfer", "reconstruction"):
            for metric, summary in method[part].items():
                if metric not in other[part] or (part == "reconstruction" and metric in reconstruction_seen):
                    continue
                if part == "reconstruction":
                    reconstruction_seen.add(metric)
                old, new = summary["values"], other[part][metric]["values"]
                differences = [b - a for a, b in zip(old, new, strict=True)]
                difference = statistics.fmean(differences)
                spread = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else 0.0
                better = difference > 0 if metric in HIGHER_IS_BETTER else difference < 0
                rows.append({"method": method["name"], "metric": metric, "baseline": statistics.fmean(old),
                             "candidate": statistics.fmean(new), "difference": difference, "standard_error": spread,
                             "candidate_better": better,
                             "counted": not (method.get("n") == k and metric in STYLE_DISTANCES)})
    if not rows:
        raise ValueError(f"no method of family {family!r} in both evaluations")
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | metric | baseline | candidate | difference ± s.e. | better |", "|---" * 6 + "|"]
    for row in rows:
        title, fmt = _COLUMNS.get(row["metric"], (row["metric"], "{:.4f}"))
        cells = [fmt.format(row[key]) for key in ("baseline", "candidate", "difference")]
        lines.append(f"| {row['method']} | {title} | {cells[0]} | {cells[1]} | {cells[2]} ± "
                     f"{fmt.format(row['standard_error'])} | {'candidate' if row['candidate_better'] else 'baseline'}"
                     f"{'' if row['counted'] else ' (not counted: n = K)'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("baseline", help="the bundled model's evaluation (results.json or its folder)")
    parser.add_argument("candidate", help="the new model's evaluation of the same photos")
    parser.add_argument("--family", default="coat", help="the method rows compared (default: coat, the n sweep)")
    args = parser.parse_args(argv)
    try:
        rows = compare(load_results(args.baseline), load_results(args.candidate), args.family)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(markdown(rows))
    counted = [row for row in rows if row["counted"]]
    losses = [f"{row['method']} {_COLUMNS.get(row['metric'], (row['metric'],))[0]}" for row in counted
              if not row["candidate_better"]]
    if losses:
        print(f"\nthe candidate is not better on {len(losses)} of {len(counted)}: {', '.join(losses)}")
        return 1
    print(f"\nthe candidate is better on all {len(counted)} metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
