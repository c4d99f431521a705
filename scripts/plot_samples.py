"""Rule plot_samples: samples of every method at one cell (image grid, or scatter against the target)."""

from adasched.report import plot_samples
from adasched.workflow import logging_to

with logging_to(snakemake.log[0]):
    plot_samples(snakemake.input.samples, snakemake.output[0], model=snakemake.params.spec,
                 title=snakemake.wildcards.model)
