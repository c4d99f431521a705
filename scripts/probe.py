"""Rules probe_corrector, probe_predictor: incremental costs on a probe grid (adasched probe), where dispatch says."""

from adasched.dispatch import stage

stage("probe", snakemake.log[0], snakemake.config, output=snakemake.output[0], **snakemake.params.options)
