# Metrics: exact ODE error and sliced W2 (analytic targets), FID (EDM), digits_fd and high-NFE error (digits).


rule evaluate:
    input:
        unpack(lambda w: SWEEP.evaluate_inputs(w.model)),
        samples=f"{R}/{{model}}/samples/{{method}}/{{solver}}-nfe{{nfe}}.npz",
    output:
        f"{R}/{{model}}/metrics/{{method}}/{{solver}}-nfe{{nfe}}.json",
    log:
        f"{R}/logs/{{model}}/metrics/{{method}}/{{solver}}-nfe{{nfe}}.log",
    params:
        options=lambda w: SWEEP.evaluate_options(w.model),
        version=VERSION,
    resources:
        gpu=config["gpus"],
    run:
        run_stage("evaluate", log[0], config, samples=input.samples, reference=input.get("reference"),
                  classifier=input.get("classifier"), output=output[0], **params.options)
