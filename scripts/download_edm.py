"""Rule download_edm: fetch an EDM pickle into the loader's cache by loading it (hash-checked, refused if unpinned
and not trusted; adasched.edm.load_edm)."""

from pathlib import Path

from adasched.edm import load_edm
from adasched.workflow import logging_to

with logging_to(snakemake.log[0]):
    load_edm(snakemake.params.spec, trust=snakemake.params.trust)
    assert Path(snakemake.output[0]).exists(), f"load_edm did not cache {snakemake.output[0]}"
