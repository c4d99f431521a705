"""adasched workflow: probe -> schedule -> sample -> evaluate -> summary, plots, report.

Run from the repository root: `snakemake --cores 2` (the embedded offline default, config.yaml), or
`snakemake --cores N --configfile config/edm-cifar10.yaml`: a config file given on the command line replaces
config.yaml instead of being merged into it. How to run and read the results: docs/workflow.md.
"""

import os
import sys

from snakemake.utils import min_version

import adasched
from adasched.errors import AdaschedError
from adasched.workflow import Sweep, run_stage, validate_config

min_version("9.0")

# `snakemake --lint` asks for a conda environment or container per rule. There is none to name: every job runs
# in the project's pip venv (`make setup`), whose torch comes from wheels pip finds on the machine and conda
# does not. That is the one lint left, on purpose (tests/test_workflow.py checks it is the only one).


# Snakemake deep-merges --configfile files into a `configfile:` loaded here, which would mix the default's
# models into e.g. an EDM sweep; so the default is only loaded when no config file is given.
if not workflow.config_settings.configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


# The schema (defaults filled in), then what a schema cannot check (unreachable NFE, targets that are not
# distributions, ranges, every stage's options): a bad config is one line naming the key, before any job runs.
try:
    validate_config(config, os.path.join(workflow.basedir, "schemas/config.schema.yaml"))
    SWEEP = Sweep(config)
except AdaschedError as e:
    sys.exit(f"adasched: config error: {e}")
R = SWEEP.results
# Imported code is invisible to Snakemake's rerun triggers: the package version reaches every rule as a param
# (after changing the library without a version bump, rerun what it affects with --forcerun RULE).
VERSION = adasched.__version__


wildcard_constraints:
    **SWEEP.wildcard_constraints(),


include: "rules/models.smk"
include: "rules/probe.smk"
include: "rules/schedule.smk"
include: "rules/sample.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        SWEEP.targets(),
