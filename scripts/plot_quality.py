"""Rule plot_quality: quality against NFE for one model."""

from adasched.report import plot_quality
from adasched.workflow import logging_to, metric_rows

with logging_to(snakemake.log[0]):
    plot_quality(metric_rows(snakemake.input), snakemake.output[0], title=snakemake.wildcards.model)
