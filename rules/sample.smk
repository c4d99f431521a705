# Samples: every schedule run by its solver on the same seeds (common random numbers; adasched sample).


rule sample:
    input:
        schedule=f"{R}/{{model}}/schedules/{{method}}/{{solver}}-nfe{{nfe}}.json",
        model=lambda w: SWEEP.model_file(w.model),
    output:
        (
            f"{R}/{{model}}/samples/{{method}}/{{solver}}-nfe{{nfe}}.npz"
            if SWEEP.keep_samples()
            else temp(f"{R}/{{model}}/samples/{{method}}/{{solver}}-nfe{{nfe}}.npz")
        ),
    log:
        f"{R}/logs/{{model}}/samples/{{method}}/{{solver}}-nfe{{nfe}}.log",
    params:
        options=lambda w: SWEEP.sample_options(w.model),
        version=VERSION,
    resources:
        gpu=config["gpus"],
    run:
        run_stage("sample", log[0], config, schedule=input.schedule, solver=wildcards.solver, output=output[0],
                  **params.options)
