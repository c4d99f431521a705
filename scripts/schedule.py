"""Rule schedule: one schedule JSON for a model, method, solver and NFE (adasched schedule), where dispatch says."""

from adasched.dispatch import stage

w = snakemake.wildcards
stage("schedule", snakemake.log[0], snakemake.config, method=w.method, solver=w.solver, nfe=w.nfe,
      probes=snakemake.input.get("probes"), output=snakemake.output[0], **snakemake.params.options)
