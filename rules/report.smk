# What people look at: summary.csv, figures per model, and one HTML report (adasched.report).


rule summary:
    """One row per model, schedule, solver, NFE and metric."""
    input:
        SWEEP.metric_files(),
    output:
        f"{R}/summary.csv",
    log:
        f"{R}/logs/summary.log",
    params:
        version=VERSION,
    script:
        "../scripts/summary.py"


rule plot_quality:
    """Quality against NFE: a panel per solver (and metric), a line per schedule, log y."""
    input:
        lambda w: SWEEP.metric_files(w.model),
    output:
        f"{R}/plots/{{model}}-quality.png",
    log:
        f"{R}/logs/plots/{{model}}-quality.log",
    params:
        version=VERSION,
    script:
        "../scripts/plot_quality.py"


rule plot_schedules:
    """Sigma against step (log y) of every method, at the middle NFE of each solver's sweep."""
    input:
        lambda w: SWEEP.schedule_plot_files(w.model),
    output:
        f"{R}/plots/{{model}}-schedules.png",
    log:
        f"{R}/logs/plots/{{model}}-schedules.log",
    params:
        version=VERSION,
    script:
        "../scripts/plot_schedules.py"


rule plot_lambda:
    """Lambda(sigma), the cumulative length of the probed cost (paper's Algorithm 1)."""
    input:
        lambda w: SWEEP.probes_needed(w.model),
    output:
        f"{R}/plots/{{model}}-lambda.png",
    log:
        f"{R}/logs/plots/{{model}}-lambda.log",
    params:
        version=VERSION,
    script:
        "../scripts/plot_lambda.py"


rule plot_samples:
    """Samples of every method at one cell: image grids, or a scatter against exact target samples."""
    input:
        samples=lambda w: SWEEP.sample_plot_files(w.model),
        model=lambda w: SWEEP.exact_model(w.model),
    output:
        f"{R}/plots/{{model}}-samples.png",
    log:
        f"{R}/logs/plots/{{model}}-samples.log",
    params:
        spec=lambda w: SWEEP.spec(w.model) if SWEEP.exact_model(w.model) else None,
        version=VERSION,
    script:
        "../scripts/plot_samples.py"


rule report:
    """results/report.html: plain HTML with the figures (relative PNG links) and the summary tables."""
    input:
        summary=f"{R}/summary.csv",
        plots=SWEEP.plots(),
    output:
        f"{R}/report.html",
    log:
        f"{R}/logs/report.log",
    params:
        info=SWEEP.report_info(),
        version=VERSION,
    script:
        "../scripts/report.py"
