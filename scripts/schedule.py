"""Rule schedule: one schedule JSON for a model, method, solver and NFE (adasched schedule)."""

from adasched.workflow import run_cli

w = snakemake.wildcards
run_cli("schedule", snakemake.log[0], method=w.method, solver=w.solver, nfe=w.nfe,
        probes=snakemake.input.get("probes"), output=snakemake.output[0], **snakemake.params.options)
