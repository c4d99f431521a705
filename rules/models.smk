# Models: analytic target files, the trained digits network, downloaded EDM pickles, FID resources.
# The downloads carry no package version param: a new adasched must not fetch gigabytes again.


rule model_json:
    """An analytic target's definition (inline in the config, or a file) as the JSON its SPEC reads."""
    input:
        lambda w: SWEEP.target_path(w.model),
    output:
        f"{R}/{{model}}/model.json",
    log:
        f"{R}/logs/{{model}}/model.log",
    params:
        kind=lambda w: SWEEP.kind(w.model),
        definition=lambda w: SWEEP.target_definition(w.model),
        version=VERSION,
    script:
        "../scripts/model_json.py"


if SWEEP.kind_models("trained-digits"):

    rule train:
        """The small UNet trained on scikit-learn's bundled 8x8 digits (adasched train), online schedule learner on."""
        output:
            f"{R}/{{model}}/model.safetensors",
        log:
            f"{R}/logs/{{model}}/train.log",
        params:
            options=lambda w: SWEEP.train_options(w.model),
            version=VERSION,
        threads: 1
        # Training is the default's critical path (8 of its 10 minutes): start it before the hundreds of short
        # cell jobs, which Snakemake would otherwise pick first and leave training for the end.
        priority: 100
        resources:
            gpu=config["gpus"],
        run:
            run_stage("train", log[0], config, in_thread=SWEEP.in_thread("train"), output=output[0],
                      **params.options)

    rule classifier:
        """The digits classifier whose features give the offline Fréchet distance digits_fd (never called FID)."""
        output:
            SWEEP.classifier(),
        log:
            f"{R}/logs/digits-classifier.log",
        params:
            seed=0,
            version=VERSION,
        script:
            "../scripts/classifier.py"


if SWEEP.edm_downloads():

    rule download_edm:
        """An EDM pickle, fetched into the loader's cache and checked (pinned hash, or recorded at first use)."""
        output:
            f"{SWEEP.download_folder()}/{{checkpoint}}",
        log:
            f"{R}/logs/download/{{checkpoint}}.log",
        params:
            spec=lambda w: SWEEP.spec(SWEEP.download_model(w.checkpoint)),
            trust=lambda w: SWEEP.trust_pickle(SWEEP.download_model(w.checkpoint)),
        script:
            "../scripts/download_edm.py"


if SWEEP.fid_files():

    rule fid_resources:
        """Inception weights and FID reference statistics, fetched once and hash-checked (evaluate runs offline)."""
        output:
            SWEEP.fid_files(),
        log:
            f"{R}/logs/fid-resources.log",
        params:
            refs=SWEEP.fid_refs(),
            protocol=config["evaluate"]["fid"]["protocol"],
        script:
            "../scripts/fid_resources.py"
