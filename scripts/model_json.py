"""Rule model_json: an analytic target (inline config or file) written as the JSON its model SPEC reads."""

from adasched.workflow import logging_to, write_model_json

with logging_to(snakemake.log[0]):
    write_model_json(snakemake.params.kind, snakemake.output[0], definition=snakemake.params.definition,
                     path=snakemake.input[0] if snakemake.input else None)
