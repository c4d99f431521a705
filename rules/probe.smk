# Probes: the paper's incremental costs on a grid of noise levels (adasched probe), per model.


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
