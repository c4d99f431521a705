"""Files of the workflow that are not stages: analytic target definitions, FID resources, the summary table.

The rules' scripts (``scripts/``) call these; each is a small function over the tested library.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Iterable

from adasched.errors import AdaschedError
from adasched.fid import ensure_resource, inception_resource, reference_resource
from adasched.io import atomic_path, read_json, write_json
from adasched.report import read_summary  # noqa: F401  (re-exported: the summary is read where it is shown)
from adasched.targets import GaussianMixture, PowerLawGaussian
from adasched.workflow.sweep import ANALYTIC_KINDS, parse_cell

__all__ = ["write_model_json", "fetch_fid_resources", "metric_rows", "write_summary", "read_summary",
           "SUMMARY_FIELDS"]

log = logging.getLogger(__name__)

SUMMARY_FIELDS = ("model", "method", "solver", "nfe", "metric", "value", "num_samples")


def write_model_json(kind: str, output: str | os.PathLike, definition: dict | None = None,
                     path: str | os.PathLike | None = None) -> None:
    """Validate an analytic target (inline ``definition`` or the JSON file at ``path``) and write it to ``output``
    in the form its SPEC reads (``gmm:`` / ``powerlaw:``)."""
    if (definition is None) == (path is None):
        raise AdaschedError("give exactly one of an inline definition or a path")
    obj = definition if definition is not None else read_json(path, f"{kind} target file")
    source = str(path) if path is not None else f"inline {kind} target"
    if kind == "gmm":
        out = GaussianMixture.from_json(obj, source=source).to_json()
    elif kind == "powerlaw":
        PowerLawGaussian.from_json(obj, source=source)
        out = dict(obj)
    else:
        raise AdaschedError(f"not an analytic kind: {kind!r}; valid: {', '.join(ANALYTIC_KINDS)}")
    write_json(output, out)


def fetch_fid_resources(refs: Iterable[str], protocol: str, folder: str | os.PathLike) -> list[Path]:
    """Fetch (or verify) the Inception weights and the downloadable reference statistics into ``folder``
    (:func:`adasched.fid.ensure_resource`: hash-checked, recorded in the folder's lock file)."""
    resources = [inception_resource()] + [r for r in (reference_resource(ref, protocol) for ref in refs) if r]
    out = []
    for r in resources:
        log.info("fetching %s", r.name)
        out.append(ensure_resource(r, folder))
    return out


# -------------------------------------------------------------------------------------------------- summary


def metric_rows(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """One row per (model, method, solver, NFE, metric) of the metrics JSONs at ``paths``."""
    rows = []
    for p in paths:
        cell, d = parse_cell(p), read_json(p, "metrics file")
        for name, value in d["metrics"].items():
            rows.append({**cell, "metric": name, "value": float(value), "num_samples": int(d["num_samples"])})
    return rows


def write_summary(paths: Iterable[str | os.PathLike], output: str | os.PathLike) -> None:
    """``summary.csv``: :func:`metric_rows` sorted by model, metric, method, solver and NFE (atomic)."""
    rows = sorted(metric_rows(paths), key=lambda r: (r["model"], r["metric"], r["method"], r["solver"], r["nfe"]))
    with atomic_path(output) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "value": repr(r["value"])})
