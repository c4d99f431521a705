# Metrics: exact ODE error and sliced W2 (analytic targets), FID (EDM), digits_fd and high-NFE error (digits).


rule evaluate:
    input:
        unpack(lambda w: SWEEP.evaluate_inputs(w.model)),
        samples=SWEEP.pattern("samples"),
    output:
        SWEEP.pattern("metrics"),
    log:
        SWEEP.log_pattern("metrics"),
    params:
        options=lambda w: SWEEP.evaluate_options(w.model),
        version=VERSION,
    resources:
        gpu=config["gpus"],
    run:
        run_stage("evaluate", log[0], config, samples=input.samples, reference=input.get("reference"),
                  classifier=input.get("classifier"), output=output[0], **params.options)
