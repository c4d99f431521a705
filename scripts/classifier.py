"""Rule classifier: the digits classifier whose features define digits_fd."""

from adasched.classifier import save_classifier, train_digits_classifier
from adasched.workflow import logging_to

with logging_to(snakemake.log[0]):
    save_classifier(train_digits_classifier(snakemake.params.seed), snakemake.output[0])
