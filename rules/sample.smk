# Samples: every schedule run by its solver on the same seeds (common random numbers; adasched sample).


rule sample:
    input:
        schedule=SWEEP.pattern("schedules"),
        model=lambda w: SWEEP.model_file(w.model),
    output:
        SWEEP.pattern("samples") if SWEEP.keep_samples() else temp(SWEEP.pattern("samples")),
    log:
        SWEEP.log_pattern("samples"),
    params:
        options=lambda w: SWEEP.sample_options(w.model, w.solver),
        version=VERSION,
    resources:
        gpu=config["gpus"],
    run:
        run_stage("sample", log[0], config, schedule=input.schedule, solver=wildcards.solver, output=output[0],
                  **params.options)
