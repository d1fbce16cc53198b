"""The whole DAG on config/tiny.yaml in a copy of the repository: every stage runs, every artifact has
the schema the next stage reads, and a second invocation has nothing to do. A second run of the tiny config
with two seeds (1 reward x 2 methods) checks the per-seed artifacts and the report's aggregation over seeds."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from workflow_helpers import copy_repo

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
RUNS = [(r, m) for r in ("colour", "contrast") for m in ("flow_grpo", "sa_reg", "diverse_grpo")]
TINY = yaml.safe_load((REPO / "config/tiny.yaml").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("wf") / "repo")
    cmd = SNAKEMAKE + ["--cores", "2", "--configfile", "config/tiny.yaml", "-q"]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return repo


@pytest.mark.slow
def test_captions_split_without_overlap(tiny_run):
    train = pd.read_parquet(tiny_run / "results/captions/train.parquet")
    held_out = pd.read_parquet(tiny_run / "results/captions/eval.parquet")
    assert list(train.columns) == ["prompt_id", "prompt", "split"]
    assert not set(train.prompt) & set(held_out.prompt) and len(held_out) >= 1


@pytest.mark.slow
def test_every_run_wrote_a_lora_log_and_curve(tiny_run):
    for reward, method in RUNS:
        run = tiny_run / f"results/runs/toy/{reward}/{method}/seed0"
        lora = load_file(str(run / "lora/pytorch_lora_weights.safetensors"))
        assert lora and all("lora_" in k and k.startswith("transformer.") for k in lora)
        log = pd.read_parquet(run / "log.parquet")
        assert list(log.iteration) == [0, 1]
        for column in ("reward_mean", "reward_std", "diversity", "clusters", "bonus_mean", "regularizer", "clipfrac",
                       "mode_entropy"):
            assert column in log
        timings = pd.read_parquet(run / "timings.parquet")
        assert list(timings.iteration) == [0, 1] and (timings.seconds_train > 0).all()
        # the LoRA starts as the identity (B = 0): the policy equals the reference at iteration 0
        assert log.regularizer.iloc[0] == 0
        assert (log.regularizer.iloc[-1] > 0) == (method != "flow_grpo")
        assert log.bonus_mean.notna().all() == (method == "diverse_grpo")
        curve = pd.read_parquet(run / "curve.parquet")
        assert list(curve.iteration) == [0, 1, 2] and {"diversity", "reward_reward", "mode_entropy"} <= set(curve)
        config = json.loads((run / "config.json").read_text())
        assert config["method"]["regularizer"] == {"flow_grpo": "none"}.get(method, "sa_reg")


@pytest.mark.slow
def test_samples_share_prompts_and_seeds_and_carry_every_reward(tiny_run):
    base = pd.read_parquet(tiny_run / "results/samples/toy/base/seed0/images.parquet")
    for reward, method in RUNS:
        run = pd.read_parquet(tiny_run / f"results/samples/toy/{reward}/{method}/seed0/images.parquet")
        assert {"split", "prompt_id", "prompt", "index", "seed", "image", "reward_colour", "reward_contrast"} <= set(
            run)
        assert run[["split", "prompt_id", "index", "seed"]].equals(base[["split", "prompt_id", "index", "seed"]])
        assert run.image.map(lambda b: b[:8] == b"\x89PNG\r\n\x1a\n").all()


@pytest.mark.slow
def test_samples_hold_both_splits_first_prompts_in_file_order(tiny_run):
    """The held-out captions (as before) then the training ones, at most sample.max_prompts of each, in one file."""
    samples = pd.read_parquet(tiny_run / "results/samples/toy/colour/diverse_grpo/seed0/images.parquet")
    assert list(dict.fromkeys(samples.split)) == ["eval", "train"]
    per_prompt = TINY["sample"]["images_per_prompt"]
    for split in ("eval", "train"):
        captions = pd.read_parquet(tiny_run / f"results/captions/{split}.parquet").head(TINY["sample"]["max_prompts"])
        mine = samples[samples.split == split]
        assert mine.prompt.tolist() == [p for p in captions.prompt for _ in range(per_prompt)]
        assert mine["index"].tolist() == list(range(per_prompt)) * len(captions)
    assert (samples.seed == 0).all()


@pytest.mark.slow
def test_metrics_and_report(tiny_run):
    metrics = pd.read_parquet(tiny_run / "results/metrics/toy/colour/diverse_grpo/seed0/metrics.parquet")
    assert set(metrics.split) == {"eval", "train"} and (metrics.seed == 0).all()
    assert set(metrics[metrics.scope == "prompt"].groupby("split").prompt.nunique()) == {TINY["sample"]["max_prompts"]}
    metrics = metrics[metrics.split == "eval"]
    overall = metrics[metrics.scope == "overall"].set_index("metric").value
    for name in ("diversity", "ssim_diversity", "fd_base", "irs_base", "fd_world", "mode_entropy", "mode_coverage",
                 "reward_colour"):
        assert name in overall.index
    errors = metrics[metrics.scope == "overall_se"].set_index("metric").value
    assert {"diversity", "mode_entropy", "valid_share", "reward_colour"} <= set(errors.index) and (errors >= 0).all()
    base = pd.read_parquet(tiny_run / "results/metrics/toy/base/seed0/metrics.parquet")
    for split in ("eval", "train"):
        base_overall = base[(base.scope == "overall") & (base.split == split)].set_index("metric").value
        assert abs(base_overall["fd_base"]) < 1e-6 and base_overall["irs_base"] > 0
    table = (tiny_run / "results/report/table.md").read_text()
    eval_section, train_section = table.split("## train split", 1)
    assert "## eval split" in eval_section and "bootstrap standard error" in eval_section
    assert all(m in section for m in ("base", "flow_grpo", "sa_reg", "diverse_grpo")
               for section in (eval_section, train_section))
    assert f"{overall['diversity']:.4f} ± {errors['diversity']:.4f}" in eval_section  # one seed: ± its bootstrap error
    summary = json.loads((tiny_run / "results/report/summary.json").read_text())
    entry = summary["eval"]["toy"]["colour"]["diverse_grpo"]["diversity"]
    assert entry["mean"] == pytest.approx(overall["diversity"], abs=1e-6)
    assert entry["spread"] == pytest.approx(errors["diversity"], abs=1e-6) and entry["per_seed"] == [entry["mean"]]
    assert summary["seeds"] == [0] and set(summary["ratios"]) == {"eval", "train"}
    checked = summary["claims"]["toy"]  # one seed x 2 splits x 2 rewards; sa_reg has no creative reward
    assert set(checked) == {"diverse_grpo"} and checked["diverse_grpo"]["cells"] == 4
    assert f"toy diverse_grpo: every claim in {checked['diverse_grpo']['all']} of 4 cells;" in table
    for name in ("pareto.png", "curves.png", "grids/toy_colour.png", "grids/toy_contrast.png", "table.tex",
                 "pareto.csv"):
        assert (tiny_run / "results/report" / name).stat().st_size > 0


REPORTED = {  # file -> the caption under workflow/report/ that describes it
    "results/report/table.md": "table.rst",
    "results/report/table.tex": "table_tex.rst",
    "results/report/pareto.png": "pareto.rst",
    "results/report/curves.png": "curves.rst",
    "results/report/grids/toy_colour.png": "grid.rst",
    "results/report/grids/toy_contrast.png": "grid.rst",
    "results/analyses/efficiency.png": "efficiency.rst",
    "results/analyses/replicator.png": "replicator.rst",
    "results/analyses/budget.png": "budget.rst",
}


@pytest.mark.slow
def test_analyses_tables(tiny_run):
    """One row per run (efficiency, replicator); per run and base, the budget from 0 (nothing shared) to 1 (all)."""
    runs = {("toy", r, m, 0) for r, m in RUNS}
    efficiency = pd.read_parquet(tiny_run / "results/analyses/efficiency.parquet")
    assert set(zip(efficiency.backbone, efficiency.reward, efficiency.method, efficiency.seed)) == runs
    assert (efficiency.last_iteration == TINY["train"]["iterations"] - 1).all()  # the log's last row
    replicator = pd.read_parquet(tiny_run / "results/analyses/replicator.parquet")
    assert set(zip(replicator.backbone, replicator.reward, replicator.method, replicator.seed)) == runs
    assert (replicator.eta >= 0).all()
    budget = pd.read_parquet(tiny_run / "results/analyses/budget.parquet")
    draws = TINY["backbones"]["toy"]["train_steps"] + 1
    for _, table in budget.groupby(["reward", "method"]):
        assert sorted(table.j) == list(range(draws + 1)) * TINY["analyses"]["budget_prompts"]
        assert (table[table.j == 0].budget == 0).all()
        assert table[table.j == draws].budget.to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert ("base", "base") in set(zip(budget.reward, budget.method))


def first_line(rst: Path) -> str:
    return " ".join(rst.read_text().splitlines()[0].split())


@pytest.mark.slow
def test_snakemake_report_is_one_self_contained_html_file(tiny_run):
    import base64
    import html
    import re

    done = subprocess.run(SNAKEMAKE + ["--cores", "2", "--report", "report.html", "--configfile", "config/tiny.yaml"],
                          cwd=tiny_run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    # self-contained: no src/href to anything but an anchor or an embedded data: URI
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert links and not [u for u in links if not u.startswith(("data:", "#", "javascript:"))], links
    results = json.loads(re.search(r'<script id="results">\s*var results = (\{.*?\});?\s*</script>', page, re.S)[1])
    assert set(results) == set(REPORTED)
    for name, caption in REPORTED.items():
        entry = results[name]
        embedded = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        assert embedded == (tiny_run / name).read_bytes(), f"{name} is not embedded as it is"
        text = html.unescape(" ".join(re.sub(r"<[^>]+>", " ", entry["caption"]).split()))
        assert first_line(REPO / "workflow/report" / caption) in text, (name, text[:300])
    # Table 1 itself is in its caption (an included literal block), not only behind a download link
    table = html.unescape(results["results/report/table.md"]["caption"])
    assert (tiny_run / "results/report/table.md").read_text(encoding="utf-8").strip() in table
    text = " ".join(page.replace("\\n", " ").split())  # the description is a JavaScript string
    assert first_line(REPO / "workflow/report/workflow.rst") in text
    assert "Run matrix: backbones toy x rewards colour, contrast x methods flow_grpo, sa_reg, diverse_grpo" in text


# ----- two seeds: 1 reward x 2 methods, so that the ratios exist and the run stays as short as the one above -----
SEEDS = [0, 1]
SEED_MATRIX = {"runs": {"rewards": ["colour"], "methods": ["flow_grpo", "diverse_grpo"], "seeds": SEEDS}}
SPLITS = ("eval", "train")


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("seeds") / "repo")
    (repo / "seeds.yaml").write_text(yaml.safe_dump(SEED_MATRIX))
    cmd = SNAKEMAKE + ["--cores", "2", "--configfile", "config/tiny.yaml", "seeds.yaml", "-q"]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return repo


def overall(repo: Path, run: str, seed: int, split: str, scope: str = "overall") -> pd.Series:
    metrics = pd.read_parquet(repo / f"results/metrics/toy/{run}/seed{seed}/metrics.parquet")
    assert (metrics.seed == seed).all() and set(metrics.split) == set(SPLITS)
    return metrics[(metrics.scope == scope) & (metrics.split == split)].set_index("metric").value


@pytest.mark.slow
def test_each_seed_trains_its_own_runs_and_draws_its_own_images(seeds_run):
    results = seeds_run / "results"
    loras, images = {}, {}
    for method in ("flow_grpo", "diverse_grpo"):
        for seed in SEEDS:
            run = results / f"runs/toy/colour/{method}/seed{seed}"
            assert json.loads((run / "config.json").read_text())["seed"] == seed
            loras[method, seed] = (run / "lora/pytorch_lora_weights.safetensors").read_bytes()
            samples = pd.read_parquet(results / f"samples/toy/colour/{method}/seed{seed}/images.parquet")
            assert (samples.seed == seed).all() and list(dict.fromkeys(samples.split)) == list(SPLITS)
            images[method, seed] = samples.image.tolist()
    for seed in SEEDS:
        base = pd.read_parquet(results / f"samples/toy/base/seed{seed}/images.parquet")
        assert (base.seed == seed).all() and list(dict.fromkeys(base.split)) == list(SPLITS)
        images["base", seed] = base.image.tolist()
    for method in ("flow_grpo", "diverse_grpo", "base"):
        assert images[method, 0] != images[method, 1], f"{method}: seed 1 drew seed 0's images"
    assert loras["flow_grpo", 0] != loras["flow_grpo", 1]
    assert not (results / "runs/toy/colour/flow_grpo/lora").exists()  # no run outside a seed's folder


@pytest.mark.slow
def test_summary_aggregates_the_per_seed_metrics_files(seeds_run):
    import numpy as np

    summary = json.loads((seeds_run / "results/report/summary.json").read_text())
    assert summary["seeds"] == SEEDS
    for split in SPLITS:
        for run, method in (("colour/flow_grpo", "flow_grpo"), ("colour/diverse_grpo", "diverse_grpo"),
                            ("base", "base")):
            per_seed = [overall(seeds_run, run, s, split) for s in SEEDS]
            for metric in ("diversity", "mode_entropy", "valid_share", "reward_colour", "fd_base"):
                values = [float(p[metric]) for p in per_seed]
                entry = summary[split]["toy"]["colour"][method][metric]
                assert entry["per_seed"] == pytest.approx(values, abs=1e-6)
                assert entry["mean"] == pytest.approx(np.mean(values), abs=1e-6)
                assert entry["spread"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)  # two seeds: their std
        ratios = summary["ratios"][split]["toy"]["colour"]
        assert [r["seed"] for r in ratios] == SEEDS
        for r in ratios:
            mine, theirs = (overall(seeds_run, f"colour/{m}", r["seed"], split) for m in ("diverse_grpo", "flow_grpo"))
            for name, metric in (("diversity", "diversity"), ("reward", "reward_colour"),
                                 ("mode_entropy", "mode_entropy")):
                if theirs[metric] != 0:
                    assert r[name] == pytest.approx(mine[metric] / theirs[metric], rel=1e-5, abs=1e-6)
                    assert r[f"{name}_se"] > 0  # from the two runs' bootstrap standard errors
                else:
                    assert r[name] is None


@pytest.mark.slow
def test_table_1_has_both_splits_with_mean_and_spread_over_seeds(seeds_run):
    import numpy as np

    table, claims = (seeds_run / "results/report/table.md").read_text().split("\n## The paper's claims", 1)
    assert "Mean over the 2 seeds 0, 1 ± the sample standard deviation over seeds." in table
    claim_sections = claims.split("\n### ")[1:]
    assert [s.split(" ", 1)[0] for s in claim_sections] == list(SPLITS)
    for split, section in zip(SPLITS, claim_sections):  # each seed of the method with a creative reward
        for seed in SEEDS:
            ratio = (overall(seeds_run, "colour/diverse_grpo", seed, split)["diversity"]
                     / overall(seeds_run, "colour/flow_grpo", seed, split)["diversity"])
            row = next(line for line in section.splitlines() if line.startswith(f"| toy | colour | diverse_grpo | "
                                                                                 f"{seed} |"))
            assert row.split(" | ")[6].startswith(f"{ratio:.2f} ")  # diversity / Flow-GRPO
    cells = len(SEEDS) * len(SPLITS) * len(SEED_MATRIX["runs"]["rewards"])
    assert "toy diverse_grpo: every claim in " in claims and f" of {cells} cells;" in claims
    sections = table.split("\n## ")[1:]
    assert [s.split(" ", 1)[0] for s in sections] == list(SPLITS)
    for split, section in zip(SPLITS, sections):
        values = [float(overall(seeds_run, "colour/diverse_grpo", s, split)["diversity"]) for s in SEEDS]
        assert f"| toy | colour | diverse_grpo | {np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} |" in section
        assert "DiverseGRPO / Flow-GRPO per seed" in section and "| toy | colour | 1 |" in section
    tex = (seeds_run / "results/report/table.tex").read_text()
    assert r"\emph{eval split (held-out captions)}" in tex and r"\emph{train split (training captions)}" in tex
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2
    pareto = pd.read_csv(seeds_run / "results/report/pareto.csv")
    assert sorted(set(pareto.seed)) == SEEDS
    for name in ("pareto.png", "curves.png", "grids/toy_colour.png"):
        assert (seeds_run / "results/report" / name).stat().st_size > 0


# ----- the adaptive K: a method with sa_steps: auto waits for the base model's budget and records its K -----
AUTO = {"methods": {"auto": {"regularizer": "sa_reg", "reg_weight": 0.1, "sa_steps": "auto",
                             "train": {"timestep_fraction": 0.99}}},  # 2 of tiny's 3 steps trained: K in 1..2
        "runs": {"rewards": ["colour"], "methods": ["auto"]}, "analyses": {"auto_k_share": 0.5}}


@pytest.mark.slow
def test_the_adaptive_k_is_chosen_from_the_base_model_s_budget(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    (repo / "auto.yaml").write_text(yaml.safe_dump(AUTO))
    target = "results/runs/toy/colour/auto/seed0/config.json"
    cmd = SNAKEMAKE + ["--cores", "2", target, "--configfile", "config/tiny.yaml", "auto.yaml", "-q"]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    budget = pd.read_parquet(repo / "results/analyses/budget/toy/base/seed0.parquet")
    diversity = budget.groupby("j").diversity.mean().sort_index().to_numpy()
    by_j = 1 - diversity / diversity[0]  # the analyses' budget: a ratio of means over captions
    run = json.loads((repo / target).read_text())
    chosen = run["adaptive_k"]
    trained = max(1, int(run["train"]["train_steps"] * run["train"]["timestep_fraction"]))
    assert run["method"]["sa_steps"] == chosen["sa_steps"] and 1 <= chosen["sa_steps"] <= trained
    assert chosen["budget"] == pytest.approx(by_j, abs=1e-4) and chosen["share"] == 0.5
    k = chosen["sa_steps"]
    assert k == trained or by_j[k + 1] >= 0.5  # the fewest steps: fewer decide less than the share
    assert all(by_j[j + 1] < 0.5 for j in range(1, k))
