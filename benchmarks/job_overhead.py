"""The fixed cost every Snakemake train / sample job pays before its own work: imports and set-up.

Each variant runs in a fresh interpreter (a job's situation: nothing imported yet), interpreter start
included, timed twice: wall clock, and the child's CPU time (user + system), which load from other
processes on a shared machine inflates far less. Variants are interleaved (round r runs every variant
once) so that such load hits them alike; the tables give the median per variant and its ratio to what
the toy backbone imported before this benchmark existed.

    python benchmarks/job_overhead.py                  # 3 rounds
    python benchmarks/job_overhead.py --repeats 5 --baseline HEAD~1

--baseline REV adds the train and sample jobs run on a copy of today's src/ in which the files of
--baseline-files (default: backbones/toy.py) are as they were at git revision REV (first on PYTHONPATH),
interleaved with today's: before / after of one change in one run, whatever else changed meanwhile.

The two job variants are real entry points on tiny inputs, so that their own work is a small part:
- train: `python -m diversegrpo.stages.train` on a run config of 1 iteration (1 prompt x 4 images, 2 SDE
  steps; 2 held-out images of 1 ODE step before and after), ending with the LoRA written;
- sample: the sample stage (scripts/sample.py's call) with a LoRA, 1 image of 1 ODE step per caption split, 1 reward.
Both load a toy backbone of the default config's size (random weights: the cost does not depend on
their values).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The reference of the ratios is what ToyBackbone imported before this benchmark existed. The other
# diffusers variants are the candidates for a lighter import; the table also says what each loads.
IMPORTS = {
    "python (interpreter only)": "pass",
    "import torch": "import torch",
    "toy backbone's imports, before": "from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline",
    "toy backbone's imports, now": (
        "from diffusers import SD3Transformer2DModel; from diffusers.loaders.lora_pipeline import SD3LoraLoaderMixin"
    ),
    "model class, top-level lazy module": "from diffusers import SD3Transformer2DModel",
    "model class, module path": "from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel",
}
REFERENCE = "toy backbone's imports, before"
# Packages whose presence after an import the table reports (the import's own modules count apart).
WATCHED = ("peft", "transformers", "diffusers.pipelines", "transformers.models.clip", "torch._dynamo", "scipy.stats")
LOADED = "; import sys; print(len(sys.modules), *[m for m in {watched} if m in sys.modules])"

SAMPLE = """
import sys
from diversegrpo.stages.sample import SampleSettings, sample_stage
fixtures = sys.argv[1]
spec = {{"kind": "toy", "path": fixtures + "/backbone", "eval_steps": 1, "guidance_scale": 1.0,
         "lora": {lora}}}
captions = {{"eval": fixtures + "/eval.parquet", "train": fixtures + "/eval.parquet"}}
settings = SampleSettings(backbone=spec, rewards={{"colour": {{"kind": "toy_colour"}}}},
                          sample={{"images_per_prompt": 1, "max_prompts": 1}}, seed=0, device="cpu", torch_threads=1)
sample_stage(settings, fixtures + "/lora", captions, sys.argv[2])
"""


def build_fixtures(directory: Path) -> dict:
    """A toy backbone of the default size, a LoRA for it, the evaluation captions and a tiny run config."""
    import pandas as pd
    import torch

    from diversegrpo import config as C
    from diversegrpo.backbones.base import LoraSpec
    from diversegrpo.backbones.toy import ToyBackbone, ToyConfig
    from diversegrpo.worlds import toy as world

    config = C.load(ROOT / "config/config.yaml")
    toy = config["backbones"]["toy"]
    torch.manual_seed(0)
    backbone = ToyBackbone(ToyConfig(**{k: v for k, v in toy["model"].items() if k in ToyConfig.__dataclass_fields__}))
    backbone.save(directory / "backbone")
    backbone.add_lora(LoraSpec.from_config(toy["lora"], backbone.lora_targets))
    backbone.save_lora(directory / "lora")

    prompts = [c["prompt"] for c in world.captions()]
    pd.DataFrame({"prompt_id": range(len(prompts)), "prompt": prompts}).to_parquet(directory / "eval.parquet")

    spec = C.run_spec(config, "toy", "colour", "diverse_grpo", str(directory / "backbone"))
    spec.pop("eval_prompt_count")
    spec["backbone"]["eval_steps"] = 1
    spec["train"].update(prompts_per_iteration=1, group_size=4, train_steps=2)  # 4: the creative reward's k
    spec.update(train_prompts=prompts[:4], eval_prompts=prompts[12:13], iterations=1, eval_every=1,
                checkpoint_every=10, eval_images_per_prompt=2, device="cpu", torch_threads=1)
    (directory / "run.json").write_text(json.dumps(spec))
    return toy["lora"]


def extract(rev: str, paths: list[str], directory: Path) -> Path:
    """Today's src/ with `paths` as they were at git revision `rev`, under `directory`; returns the folder
    to put on PYTHONPATH. Only those files go back: the rest of the tree (edited by others meanwhile)
    must match the fixtures, which today's config code builds."""
    shutil.copytree(ROOT / "src", directory / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for path in paths:
        text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True).stdout
        (directory / path).write_bytes(text)
    return directory / "src"


def variants(fixtures: Path, lora: dict, baseline: Path | None, rev: str | None) -> dict[str, tuple[list, dict]]:
    """name -> (argv with {out} for a fresh output path, extra environment)."""
    py = sys.executable
    table = {name: ([py, "-c", code], {}) for name, code in IMPORTS.items()}
    trees = [("", ROOT / "src")] + ([(f" ({rev})", baseline)] if baseline else [])
    for suffix, src in trees:
        env = {"PYTHONPATH": str(src)}
        table[f"train job, tiny{suffix}"] = (
            [py, "-m", "diversegrpo.stages.train", "--run-config", str(fixtures / "run.json"), "--out", "{out}"], env)
        table[f"sample job, tiny{suffix}"] = (
            [py, "-c", SAMPLE.format(lora=repr(lora)), str(fixtures), "{out}/images.parquet"], env)
    return table


def what_loads(code: str) -> str:
    """How many modules `code` leaves in sys.modules (the interpreter's own included), and which of WATCHED."""
    result = subprocess.run([sys.executable, "-c", code + LOADED.format(watched=WATCHED)], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, check=True)
    return result.stdout.split("\n")[-2]


def run_once(argv: list, env: dict, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child and its threads)."""
    argv = [a.replace("{out}", str(out)) for a in argv]
    out.mkdir(parents=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{argv} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every variant once")
    parser.add_argument(
        "--baseline", metavar="REV", help="also time the jobs with --baseline-files as at git revision REV"
    )
    parser.add_argument("--baseline-files", nargs="+", default=["src/diversegrpo/backbones/toy.py"], metavar="PATH",
                        help="the files the baseline takes from REV (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="job_overhead_") as tmp:
        tmp = Path(tmp)
        (tmp / "fixtures").mkdir()
        lora = build_fixtures(tmp / "fixtures")
        baseline = extract(args.baseline, args.baseline_files, tmp / "baseline") if args.baseline else None
        table = variants(tmp / "fixtures", lora, baseline, args.baseline)
        wall: dict[str, list[float]] = {name: [] for name in table}
        cpu: dict[str, list[float]] = {name: [] for name in table}
        for r in range(args.repeats):
            for i, (name, (argv, env)) in enumerate(table.items()):
                w, c = run_once(argv, env, tmp / "out" / f"{r}_{i}")
                wall[name].append(w)
                cpu[name].append(c)
            print(f"round {r + 1}/{args.repeats} done", file=sys.stderr)
    for label, times in (("wall", wall), ("CPU", cpu)):
        reference = statistics.median(times[REFERENCE])
        print(f"{'variant':36s} {label + ' s':>8s} {'ratio':>6s}   "
              f"each round's {label} s (median; ratio: to {REFERENCE!r})")
        for name, seconds in times.items():
            median = statistics.median(seconds)
            print(f"{name:36s} {median:8.2f} {median / reference:6.2f}   {' '.join(f'{s:.2f}' for s in seconds)}")
        print()
    print(f"{'import':36s} modules in sys.modules, then which of {WATCHED}")
    for name, code in IMPORTS.items():
        print(f"{name:36s} {what_loads(code)}")
    if baseline:
        print()
        for job in ("train", "sample"):
            for label, times in (("wall", wall), ("CPU", cpu)):
                now, before = (statistics.median(times[f"{job} job, tiny{s}"]) for s in ("", f" ({args.baseline})"))
                print(f"{job} job, {label}: {now:.2f} s now / {before:.2f} s with {' '.join(args.baseline_files)} at "
                      f"{args.baseline} = {now / before:.2f}")


if __name__ == "__main__":
    main()
