# Schedules: one JSON per model, method, solver and NFE (adasched schedule).


rule schedule:
    """Closed forms need nothing; score-optimal methods read a probe file; solver-aware also the model, its
    reference solves and, as a warm start, its solver-aware schedule at the next lower NFE of the sweep."""
    input:
        unpack(lambda w: SWEEP.schedule_inputs(w.model, w.method, w.solver, w.nfe)),
    output:
        SWEEP.pattern("schedules"),
    log:
        SWEEP.log_pattern("schedules"),
    params:
        options=lambda w: SWEEP.schedule_options(w.model, w.method, w.solver),
        in_thread=lambda w: SWEEP.in_thread("schedule", w.method),
        version=VERSION,
    run:
        run_stage("schedule", log[0], config, in_thread=params.in_thread, method=wildcards.method, nfe=wildcards.nfe,
                  solver=wildcards.solver, output=output[0], **SWEEP.schedule_files(input), **params.options)
