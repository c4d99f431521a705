"""Rule train: the digits network with the online schedule learner (adasched train), where dispatch says."""

from adasched.dispatch import stage

stage("train", snakemake.log[0], snakemake.config, data="digits", output=snakemake.output[0],
      **snakemake.params.options)
