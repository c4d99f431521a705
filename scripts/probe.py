"""Rules probe_corrector, probe_predictor: incremental costs on a probe grid (adasched probe)."""

from adasched.workflow import run_cli

run_cli("probe", snakemake.log[0], output=snakemake.output[0], **snakemake.params.options)
