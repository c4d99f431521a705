"""Rule sample: draw samples along one schedule with its solver (adasched sample)."""

from adasched.workflow import run_cli

run_cli("sample", snakemake.log[0], schedule=snakemake.input.schedule, solver=snakemake.wildcards.solver,
        output=snakemake.output[0], **snakemake.params.options)
