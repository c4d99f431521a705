"""Rule report: results/report.html from the summary and the figures."""

from adasched.report import write_report
from adasched.workflow import logging_to

with logging_to(snakemake.log[0]):
    write_report(snakemake.output[0], summary=snakemake.input.summary, plots=snakemake.input.plots,
                 info=snakemake.params.info)
