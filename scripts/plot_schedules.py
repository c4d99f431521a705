"""Rule plot_schedules: the schedules of one model (sigma against step)."""

from adasched.report import plot_schedules
from adasched.workflow import logging_to

with logging_to(snakemake.log[0]):
    plot_schedules(snakemake.input, snakemake.output[0], title=snakemake.wildcards.model)
