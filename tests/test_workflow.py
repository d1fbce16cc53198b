"""The whole DAG on config/tiny.yaml in a copy of the repository: every stage runs, every artifact has
the schema the next stage reads, and a second invocation has nothing to do."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from workflow_helpers import copy_repo

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
RUNS = [(r, m) for r in ("colour", "contrast") for m in ("flow_grpo", "sa_reg", "diverse_grpo")]


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
        run = tiny_run / f"results/runs/toy/{reward}/{method}"
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
    base = pd.read_parquet(tiny_run / "results/samples/toy/base/images.parquet")
    for reward, method in RUNS:
        run = pd.read_parquet(tiny_run / f"results/samples/toy/{reward}/{method}/images.parquet")
        assert {"prompt_id", "prompt", "index", "seed", "image", "reward_colour", "reward_contrast"} <= set(run)
        assert run[["prompt_id", "index", "seed"]].equals(base[["prompt_id", "index", "seed"]])
        assert run.image.map(lambda b: b[:8] == b"\x89PNG\r\n\x1a\n").all()


@pytest.mark.slow
def test_metrics_and_report(tiny_run):
    metrics = pd.read_parquet(tiny_run / "results/metrics/toy/colour/diverse_grpo.parquet")
    overall = metrics[metrics.scope == "overall"].set_index("metric").value
    for name in ("diversity", "ssim_diversity", "fd_base", "irs_base", "fd_world", "mode_entropy", "mode_coverage",
                 "reward_colour"):
        assert name in overall.index
    errors = metrics[metrics.scope == "overall_se"].set_index("metric").value
    assert {"diversity", "mode_entropy", "valid_share", "reward_colour"} <= set(errors.index) and (errors >= 0).all()
    base = pd.read_parquet(tiny_run / "results/metrics/toy/base.parquet")
    base_overall = base[base.scope == "overall"].set_index("metric").value
    assert abs(base_overall["fd_base"]) < 1e-6 and base_overall["irs_base"] > 0
    table = (tiny_run / "results/report/table.md").read_text()
    assert all(m in table for m in ("base", "flow_grpo", "sa_reg", "diverse_grpo"))
    assert f"{overall['diversity']:.4f} ± {errors['diversity']:.4f}" in table
    summary = json.loads((tiny_run / "results/report/summary.json").read_text())
    assert summary["toy/colour/diverse_grpo/diversity"] == pytest.approx(overall["diversity"], abs=1e-6)
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
}


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
