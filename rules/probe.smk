# Probes: the paper's incremental costs on a grid of noise levels (adasched probe), and the fit reference, per model.


rule probe_corrector:
    """The corrector-optimised cost (paper's workhorse): score-optimal and solver-aware schedules, Lambda."""
    input:
        lambda w: SWEEP.model_file(w.model),
    output:
        f"{R}/{{model}}/probes.h5",
    log:
        f"{R}/logs/{{model}}/probes.log",
    params:
        options=lambda w: SWEEP.probe_options(w.model, "corrector"),
        version=VERSION,
    resources:
        gpu=config["gpus"],
    run:
        run_stage("probe", log[0], config, in_thread=SWEEP.in_thread("probe"), output=output[0], **params.options)


rule probe_predictor:
    """The predictor-optimised cost (Euler predictor, Hutchinson trace): score-optimal-po schedules."""
    input:
        lambda w: SWEEP.model_file(w.model),
    output:
        f"{R}/{{model}}/probes-po.h5",
    log:
        f"{R}/logs/{{model}}/probes-po.log",
    params:
        options=lambda w: SWEEP.probe_options(w.model, "predictor"),
        version=VERSION,
    resources:
        gpu=config["gpus"],
    run:
        run_stage("probe", log[0], config, in_thread=SWEEP.in_thread("probe"), output=output[0], **params.options)


rule fit_reference:
    """The model's own high-accuracy solves of the fit latents: the targets of all its solver-aware schedules."""
    input:
        lambda w: SWEEP.model_file(w.model),
    output:
        f"{R}/{{model}}/fit-reference.h5",
    log:
        f"{R}/logs/{{model}}/fit-reference.log",
    params:
        options=lambda w: SWEEP.reference_options(w.model),
        version=VERSION,
    resources:
        gpu=config["gpus"],
    run:
        run_stage("fit-reference", log[0], config, in_thread=SWEEP.in_thread("fit-reference"), output=output[0],
                  **params.options)
