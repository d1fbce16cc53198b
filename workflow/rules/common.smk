# Validation and routing: fail in a second on a bad config, before any stage runs; build the run matrix.
import os
import sys

from snakemake.settings.types import DeploymentMethod
from diversegrpo import config as cfg
from diversegrpo.registry import PRETRAINED_BACKBONES, WORLDS
from diversegrpo.methods import REFERENCES as CLAIM_REFERENCES


def _check_caption_paths():
    """The captions stage reads a relative captions.source / eval_source from the working directory (where
    snakemake started, or its --directory). Found beside the Snakefile instead, the file tells of the usual
    mistake, running from elsewhere with -s: say that, rather than 'does not exist' or a missing input."""
    here, base = Path.cwd(), Path(workflow.basedir)
    captions = config.get("captions") if isinstance(config.get("captions"), dict) else {}
    for key in ("source", "eval_source"):
        name = captions.get(key)
        if not isinstance(name, str) or name in WORLDS or Path(name).is_absolute() or (here / name).exists():
            continue
        if here.resolve() != base.resolve() and (base / name).exists():
            raise WorkflowError(
                f"captions.{key}: {name!r} does not exist relative to the working directory {here}, but does "
                f"relative to the Snakefile's directory {base}: run snakemake from {base}, or pass "
                f"--directory {base} (relative paths in the config are read from the working directory)"
            )


try:
    _check_caption_paths()
    # Snakemake reads the config files itself, and a key given twice there silently keeps the last:
    # read each again (the `configfile:` default and every --configfile) with the strict loader.
    for _configfile in workflow.configfiles:
        cfg.load(_configfile)
    cfg.validate(config, root=Path.cwd())  # where the captions stage will read the prompt files
except cfg.ConfigError as e:
    raise WorkflowError(str(e)) from None
# The sweeps' runs are runs of methods like any other (sweeps.smk asks for them): define those methods.
config["methods"].update(cfg.sweep_methods(config))


# Paper-world weights: one error naming every missing model, before any job starts. `onstart` does
# not run for dry runs, so the matrix can still be planned on a laptop without the weights.
onstart:
    from diversegrpo.weights import missing_models

    _missing = missing_models(config)
    if _missing:
        raise WorkflowError(
            "missing model weights (nothing is downloaded at run time):\n  - " + "\n  - ".join(_missing)
        )
    _check_run_configs()


RESULTS = "results"
# The interpreter running Snakemake (the project's venv), whatever PATH says; under
# `--software-deployment-method conda` a job runs inside the rule's env, whose `python` is on PATH.
PYTHON = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable
RUNS = cfg.run_matrix(config)  # (backbone, reward, method, seed)
SEEDS = config["runs"]["seeds"]
# Backbones pre-trained by the backbone rule, on the synthetic world of captions.source.
PRETRAINED = {b for b in config["runs"]["backbones"] if config["backbones"][b]["kind"] in PRETRAINED_BACKBONES}
# Snakemake tracks scripts, not the package they call: a package version bump reruns every stage.
PACKAGE = ["src/diversegrpo/__init__.py"]


# Seconds of work each: they run on the submitting host, never as cluster jobs.
localrules:
    captions,
    run_config,
    report,
    analyses,
    sweeps,


wildcard_constraints:
    backbone="[A-Za-z0-9_.-]+",
    reward="[A-Za-z0-9_.-]+",
    method="[A-Za-z0-9_.-]+",
    seed="0|[1-9][0-9]*",  # one spelling per seed: seed07 is no path of seed 7


def backbone_dir(backbone):
    return f"{RESULTS}/backbones/{backbone}" if backbone in PRETRAINED else None


def backbone_inputs(wildcards):
    """The pre-trained weights a toy backbone needs (paper backbones load from config paths)."""
    d = backbone_dir(wildcards.backbone)
    return [f"{d}/model.safetensors"] if d else []


def backbone_spec(backbone):
    return {**config["backbones"][backbone], **({"path": backbone_dir(backbone)} if backbone_dir(backbone) else {})}


def run_spec(wildcards):
    return cfg.run_spec(
        config,
        wildcards.backbone,
        wildcards.reward,
        wildcards.method,
        backbone_dir(wildcards.backbone),
        int(wildcards.seed),
    )


# One path scheme for every per-run artifact: <kind>/{backbone}/{reward}/{method}/seed{seed}/, and the untrained
# base model's <kind>/{backbone}/base/seed{seed}/ (each seed draws its own evaluation images).
def run_path(b, r, m, s):
    return f"{RESULTS}/runs/{b}/{r}/{m}/seed{s}"


def samples_path(b, r, m, s):
    return f"{RESULTS}/samples/{b}/{r}/{m}/seed{s}/images.parquet"


def base_samples_path(b, s):
    return f"{RESULTS}/samples/{b}/base/seed{s}/images.parquet"


def adaptive_k_inputs(wildcards):
    """The base model's diversity budget of the run's seed, for a method with sa_steps: auto (its K is chosen from
    it); nothing for a fixed K."""
    if cfg.method_settings(config, wildcards.method)["sa_steps"] != cfg.AUTO_K:
        return {}
    return {"budget": budget_path(wildcards.backbone, "base", None, wildcards.seed)}


def budget_path(b, r, m, s):
    """The diversity budget of a run, or (r "base") of the base model."""
    return (
        f"{RESULTS}/analyses/budget/{b}/base/seed{s}.parquet"
        if r == "base"
        else f"{RESULTS}/analyses/budget/{b}/{r}/{m}/seed{s}.parquet"
    )


def metrics_path(b, r, m, s):
    return f"{RESULTS}/metrics/{b}/{r}/{m}/seed{s}/metrics.parquet"


def base_metrics_path(b, s):
    return f"{RESULTS}/metrics/{b}/base/seed{s}/metrics.parquet"


BASE_METRICS = [base_metrics_path(b, s) for b in config["runs"]["backbones"] for s in SEEDS]  # every backbone and seed


def _check_run_configs():
    """A run's config.json that is no longer JSON (a disk error, a stray edit) is newer than its LoRA and has
    another checksum: Snakemake reruns the train job, which deletes the trained LoRA before it reads the
    file and fails. Stop first and say how to rebuild only config.json: run_config writes the same bytes
    again, Snakemake then finds the checksum unchanged, and the LoRA is kept (docs/running.md). Only
    files newer than their LoRA are read, so an up-to-date tree costs two stat calls per run. Called at
    onstart (after the DAG, before any job deletes an output; dry runs are not stopped): only then does
    Snakemake know the targets, and a run that targets the config.json itself is the repair."""
    import json
    import os

    targets = {os.path.normpath(t) for t in getattr(getattr(workflow, "dag_settings", None), "targets", ())}
    for run in RUNS:
        path, lora = f"{run_path(*run)}/config.json", f"{run_path(*run)}/lora/pytorch_lora_weights.safetensors"
        try:
            if os.path.getmtime(path) <= os.path.getmtime(lora) or os.path.normpath(path) in targets:
                continue
            with open(path, "rb") as f:
                if isinstance(json.loads(f.read()), dict):
                    continue
            problem = "it is not a JSON object"
        except FileNotFoundError:
            continue
        except ValueError as e:
            problem = " ".join(f"{type(e).__name__}: {e}".split())
        raise WorkflowError(
            f"{path} is unreadable ({problem}), and the trained LoRA beside it would be deleted by the rerun of "
            f"its train job. Rebuild only the config first (same settings, same bytes, so the LoRA is kept): "
            f"snakemake {path} --forcerun run_config, with your --configfile / --config options after it; "
            "then run snakemake as before"
        )


def rule_outputs(rule, **wildcards):
    """The output files of RULE's job with these wildcards (every output of the rule, flags dropped)."""
    return [str(pattern).format(**wildcards) for pattern in getattr(rules, rule).output]


def all_targets(wildcards=None):
    """Every artifact of the README's "Stages and artifacts" table, i.e. every output of every job of the
    run matrix: a deleted LoRA, figure or table is planned again, with what depends on it."""
    backbones = config["runs"]["backbones"]
    return [
        *rule_outputs("captions"),
        *(f for b in backbones if b in PRETRAINED for f in rule_outputs("backbone", backbone=b)),
        *(
            f
            for run in RUNS
            for name in ("run_config", "train", "sample", "evaluate", "budget")
            for f in rule_outputs(name, **dict(zip(("backbone", "reward", "method", "seed"), run)))
        ),
        *(
            f
            for b in backbones
            for s in SEEDS
            for name in ("sample_base", "evaluate_base", "budget_base")
            for f in rule_outputs(name, backbone=b, seed=s)
        ),
        *rule_outputs("report"),
        *rule_outputs("analyses"),
    ]


def tracked_params(rule, settings):
    """Input function: the file under results/params/ that holds the settings of RULE's job (SETTINGS of its
    wildcards), rewritten only when they change (params.smk), so that a changed setting reruns the job by
    its mtime even when .snakemake/ (where Snakemake records params) is gone. Listed as an input only
    while it marks a change; a file the outputs are trusted to match is left out (params.smk)."""

    def params_input(wildcards):
        parts = [f"seed{v}" if k == "seed" else v for k, v in wildcards.items()]  # as in the artifacts' paths
        path = os.path.join(f"{RESULTS}/params", rule, *parts) + ".json"
        outputs = rule_outputs(rule, **dict(wildcards.items()))
        return [path] if sync_params_file(path, settings(wildcards), outputs) else []

    return params_input


def train_processes(method):
    """train.processes of a run (a method may override it): the processes that train it together."""
    return cfg.method_train(config, method).get("processes", 1)


class TrainLauncher:
    """What starts `-m diversegrpo.stages.train` for a run of `processes` processes: the interpreter itself for
    one, `accelerate launch` for several. `--multi_gpu` selects accelerate's torchrun launcher, the one
    that starts N local processes (`--cpu` would start one); on a CPU-only run the processes then talk
    over gloo (diversegrpo.distributed). `--main_process_port 0`: a free port, so that runs sharing a
    node do not collide. The other flags are accelerate's defaults, spelled out to silence its warning.

    A param of no builtin type on purpose: Snakemake does not record it, so how a run is started never
    reruns it, as `{PYTHON}` never did; the process count, which changes the results, reaches the run's
    config.json (diversegrpo.config.run_spec), and that reruns it."""

    def __init__(self, processes):
        self.processes = processes

    def __str__(self):
        if self.processes == 1:
            return PYTHON
        return (
            f"{PYTHON} -m accelerate.commands.launch --multi_gpu --num_processes {self.processes} "
            "--num_machines 1 --mixed_precision no --dynamo_backend no --main_process_port 0"
        )


# What the captions stage and the toy backbone's pre-training depend on (their params files' content).
def captions_params(wildcards=None):
    return {"captions": config["captions"], "seed": config["seed"]}


def pretrain_params(wildcards):
    return {"spec": cfg.pretrain_spec(config, wildcards.backbone), "seed": config["seed"]}


# What the report depends on beyond its input files.
def report_params(wildcards=None):
    return {"runs": RUNS, "backbones": config["runs"]["backbones"], "report": config["report"]}


# Evaluation images of both caption splits: the same prompts and seeds for every run and for the untrained base;
# each replicate seed draws its own.
def sample_params(wildcards):
    return {
        "backbone": backbone_spec(wildcards.backbone),
        "rewards": {r: config["rewards"][r] for r in config["runs"]["rewards"]},
        "sample": config["sample"],
        "seed": int(wildcards.seed),
        "device": config["device"],
        "torch_threads": config["torch_threads"],
    }


# The diversity budget per denoising step, of the rollout SDE the runs train with.
def budget_params(wildcards):
    return {
        "backbone": backbone_spec(wildcards.backbone),
        "rollout": cfg.rollout_settings(config["backbones"][wildcards.backbone]),
        "micro_batch": config["train"]["micro_batch"],  # samples per forward, as the rollouts: memory only
        "analyses": config["analyses"],
        "features": config["features"],
        "world": cfg.world_name(config),
        "seed": int(wildcards.seed),
        "device": config["device"],
        "torch_threads": config["torch_threads"],
    }


# Metrics of one run's samples against the base run's (the reference for Frechet distance and IRS).
def evaluate_params(backbone, reward, method, seed):
    return {
        "features": config["features"],
        "world": cfg.world_name(config),
        "labels": {"backbone": backbone, "reward": reward, "method": method, "seed": int(seed)},
        "torch_threads": config["torch_threads"],
    }
