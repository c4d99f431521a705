"""What the Snakemake workflow's Snakefile, rules and scripts call (``Snakefile``, ``rules/*.smk``, ``scripts/``).

The workflow's own logic lives here so that it is unit-tested; rules only wire files, and every rule that runs
a stage of :mod:`adasched.stages` calls :func:`run_stage`.

* :mod:`adasched.workflow.sweep` -- :class:`Sweep`: the experiment a config describes, its checks, the cells,
  their paths and every stage's options;
* :mod:`adasched.workflow.run` -- :func:`run_stage`: a stage for a rule, in this process, a process of its own
  or on SLURM (:mod:`adasched.dispatch`);
* :mod:`adasched.workflow.files` -- the files that are not stages: target definitions, FID resources, the summary.
"""

from adasched.io import logging_to
from adasched.workflow.files import (SUMMARY_FIELDS, fetch_fid_resources, metric_rows, read_summary,
                                     write_model_json, write_summary)
from adasched.workflow.run import run_here, run_stage
from adasched.workflow.sweep import (ANALYTIC_KINDS, CELL, KINDS, METHODS, PLOTS, SOLVERS, Sweep, cell_path,
                                     parse_cell, validate_config)

__all__ = ["Sweep", "validate_config", "run_stage", "run_here", "logging_to", "write_model_json",
           "fetch_fid_resources", "metric_rows", "write_summary", "read_summary", "parse_cell", "cell_path", "CELL",
           "METHODS", "SOLVERS", "ANALYTIC_KINDS", "KINDS", "PLOTS", "SUMMARY_FIELDS"]
