"""Rule evaluate: the metrics of one samples file (adasched evaluate), where dispatch says."""

from adasched.dispatch import stage

stage("evaluate", snakemake.log[0], snakemake.config, samples=snakemake.input.samples,
      reference=snakemake.input.get("reference"), classifier=snakemake.input.get("classifier"),
      output=snakemake.output[0], **snakemake.params.options)
