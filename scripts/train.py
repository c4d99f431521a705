"""Rule train: the digits network with the online schedule learner (adasched train)."""

from adasched.workflow import run_cli

run_cli("train", snakemake.log[0], data="digits", output=snakemake.output[0], **snakemake.params.options)
