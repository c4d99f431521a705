"""Rule evaluate: the metrics of one samples file (adasched evaluate)."""

from adasched.workflow import run_cli

run_cli("evaluate", snakemake.log[0], samples=snakemake.input.samples, reference=snakemake.input.get("reference"),
        classifier=snakemake.input.get("classifier"), output=snakemake.output[0], **snakemake.params.options)
