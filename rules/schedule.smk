# Schedules: one JSON per model, method, solver and NFE (adasched schedule).


rule schedule:
    """Closed forms need nothing; score-optimal methods read a probe file, solver-aware also the model."""
    input:
        unpack(lambda w: SWEEP.schedule_inputs(w.model, w.method)),
    output:
        f"{R}/{{model}}/schedules/{{method}}/{{solver}}-nfe{{nfe}}.json",
    log:
        f"{R}/logs/{{model}}/schedules/{{method}}/{{solver}}-nfe{{nfe}}.log",
    params:
        options=lambda w: SWEEP.schedule_options(w.model, w.method),
        version=VERSION,
    run:
        run_stage("schedule", log[0], config, method=wildcards.method, solver=wildcards.solver, nfe=wildcards.nfe,
                  probes=input.get("probes"), output=output[0], **params.options)
