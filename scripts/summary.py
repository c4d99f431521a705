"""Rule summary: results/summary.csv, one row per model, schedule, solver, NFE and metric."""

from adasched.workflow import logging_to, write_summary

with logging_to(snakemake.log[0]):
    write_summary(snakemake.input, snakemake.output[0])
