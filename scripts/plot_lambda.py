"""Rule plot_lambda: Lambda(sigma) from one model's probe files."""

from adasched.report import plot_lambda
from adasched.workflow import logging_to

with logging_to(snakemake.log[0]):
    plot_lambda(snakemake.input, snakemake.output[0], title=snakemake.wildcards.model)
