"""Rule sample: draw samples along one schedule with its solver (adasched sample), where dispatch says."""

from adasched.dispatch import stage

stage("sample", snakemake.log[0], snakemake.config, schedule=snakemake.input.schedule,
      solver=snakemake.wildcards.solver, output=snakemake.output[0], **snakemake.params.options)
