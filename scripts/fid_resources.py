"""Rule fid_resources: Inception weights and FID reference statistics, hash-checked, into their folder."""

from pathlib import Path

from adasched.workflow import fetch_fid_resources, logging_to

with logging_to(snakemake.log[0]):
    fetch_fid_resources(snakemake.params.refs, snakemake.params.protocol, Path(snakemake.output[0]).parent)
