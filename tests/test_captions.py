"""The caption stage on real prompt sets: long prompts are kept, repeated prompts are dropped and counted
(never an error, never on both sides of the train / eval split), a separate evaluation file
(`captions.eval_source`) is trained beside, the shipped Pick-a-Pic files load in well under a second,
and the default toy split is the one the stage always made."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diversegrpo import config as C
from diversegrpo.stages.captions import choose, make_captions, read_prompt_file, read_prompts, split_sizes

ROOT = Path(__file__).resolve().parents[1]
BASE = C.load(ROOT / "config/config.yaml")
PAPER = C.load(ROOT / "config/paper.yaml")
PICKSCORE = ROOT / "data/pickscore"
SD3 = {"kind": "sd3", "model": "some/model", "train_steps": 10, "eval_steps": 40, "guidance_scale": 4.5,
       "noise_level": 0.7, "lora": {"rank": 4, "alpha": 4}}
# a user's prompt file needs non-toy backbones and rewards (the toy ones know the toy world only)
FILE_WORLD = {"backbones": {"sd3": SD3}, "rewards": {"clip": {"kind": "clipscore"}}, "features": {"kind": "dreamsim"},
              "runs": {"backbones": ["sd3"], "rewards": ["clip"]}}
LONG = "a watercolour of a lighthouse, " + "storm clouds, crashing waves, " * 40 + "golden hour"  # ~1,200 characters


def collapsed(prompt: str) -> str:
    """Independent of captions.duplicate_key: a regex, not str.split."""
    return re.sub(r"\s+", " ", prompt).strip()


def file_config(tmp_path, captions: dict) -> dict:
    return C.deep_merge(BASE, {**FILE_WORLD, "captions": captions})


def test_long_prompt_is_kept_whole(tmp_path):
    """Fails before: a prompt over 300 characters was an error (captions.max_prompt_chars)."""
    assert len(LONG) > 1000
    (tmp_path / "p.txt").write_text("\n".join(["short one", LONG] + [f"prompt {i}" for i in range(20)]))
    assert read_prompts(tmp_path / "p.txt")[1] == LONG
    C.validate(file_config(tmp_path, {"source": "p.txt"}), root=tmp_path)
    make_captions(str(tmp_path / "p.txt"), None, 0.25, 0, tmp_path / "train.parquet", tmp_path / "eval.parquet")
    written = pd.concat([pd.read_parquet(tmp_path / f"{s}.parquet") for s in ("train", "eval")]).prompt.tolist()
    assert LONG in written


def test_max_prompt_chars_is_gone():
    """The key is removed, not ignored: a config still setting it is told so by the schema."""
    assert "max_prompt_chars" not in BASE["captions"] and "max_prompt_chars" not in PAPER["captions"]
    errors = C.schema_errors(C.deep_merge(BASE, {"captions": {"max_prompt_chars": 300}}))
    assert any("'max_prompt_chars' was unexpected" in e for e in errors), errors


def test_training_duplicates_are_dropped_before_the_split(tmp_path, capsys):
    """Fails before (duplicates were an error). Repeats, exact or differing in whitespace runs only,
    are dropped before the split, so no prompt lands on both sides, and the log counts them."""
    distinct = [f"a photo of object {i}" for i in range(30)]
    rows = distinct + [
        "a photo of object 3",
        "a  photo of object 4",
        "a photo of\u3000object 5 ",
        "a photo of object 3",
    ]
    (tmp_path / "p.txt").write_text("\n".join(rows) + "\n")
    config = file_config(tmp_path, {"source": "p.txt"})
    C.validate(config, root=tmp_path)
    captions = make_captions(
        str(tmp_path / "p.txt"), None, 0.25, 7, tmp_path / "train.parquet", tmp_path / "eval.parquet"
    )
    train, held_out = (pd.read_parquet(tmp_path / f"{s}.parquet").prompt.tolist() for s in ("train", "eval"))
    assert sorted(train + held_out) == sorted(distinct)  # the first of each is kept, as written
    assert not {collapsed(p) for p in train} & {collapsed(p) for p in held_out}
    assert C._caption_counts(config, tmp_path, []) == (len(train), len(held_out)) == split_sizes(30, 0.25)
    log = capsys.readouterr().out
    assert f"{len(rows)} prompts, 4 duplicate(s) dropped" in log, log
    assert "line 31 repeats line 4" in log and "line 34 repeats line 4" in log
    assert captions.train == train and captions.eval == held_out


def test_eval_source_duplicates_are_dropped_and_counted_in_the_stage_log(tmp_path):
    """Fails before (no eval_source; duplicates an error). Through scripts/captions.py as the rule runs
    it: the evaluation file's repeats and its overlap with the training file are counted in the log."""
    (tmp_path / "train.txt").write_text("\n".join([f"train prompt {i}" for i in range(20)] + ["shared  prompt"]) + "\n")
    (tmp_path / "test.txt").write_text("eval one\nshared prompt\neval one\neval  one\neval two\n")
    log, out = tmp_path / "captions.log", tmp_path / "out"
    captions = {"source": str(tmp_path / "train.txt"), "eval_source": str(tmp_path / "test.txt"), "eval_fraction": None}
    fake = (f"import runpy, types; ns = types.SimpleNamespace; runpy.run_path({str(ROOT / 'scripts/captions.py')!r}, "
            f"init_globals={{'snakemake': ns(log=[{str(log)!r}], params=ns(captions={captions!r}, seed=0), "
            f"output=ns(train={str(out / 'train.parquet')!r}, eval={str(out / 'eval.parquet')!r}))}})")
    subprocess.run([sys.executable, "-c", fake], check=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    text = log.read_text()
    assert "test.txt: 5 prompts, 2 duplicate(s) dropped" in text, text
    assert "train.txt: 21 prompts, 0 duplicate(s) dropped" in text, text
    assert "1 training prompt(s) also in captions.eval_source dropped from training" in text, text
    held_out = pd.read_parquet(out / "eval.parquet")
    assert held_out.prompt.tolist() == ["eval one", "shared prompt", "eval two"]  # the file's order
    assert held_out.prompt_id.is_unique and set(held_out.split) == {"eval"}
    assert pd.read_parquet(out / "train.parquet").prompt.tolist() == [f"train prompt {i}" for i in range(20)]


def test_eval_source_counts_in_config_validation(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(f"train prompt {i}" for i in range(10)))
    (tmp_path / "test.txt").write_text("a\nb\nc\nd\ne\ntrain prompt 0\n")
    captions = {"source": "train.txt", "eval_source": "test.txt", "eval_fraction": None}
    config = file_config(tmp_path, captions)
    assert C._caption_counts(config, tmp_path, []) == (9, 6)
    with pytest.raises(C.ConfigError, match=r"train.prompts_per_iteration: \d+ exceeds the 9 training prompts"):
        C.validate(C.deep_merge(config, {"train": {"prompts_per_iteration": 10}}), root=tmp_path)
    with pytest.raises(
        C.ConfigError, match=r"eval_prompts: 7 exceeds the 6 held-out prompts \(captions.eval_source 'test.txt'\)"
    ):
        C.validate(C.deep_merge(config, {"train": {"eval_prompts": 7}}), root=tmp_path)
    (tmp_path / "test.txt").write_text("a\nb\nc\nd\ne\nf\nG\n")  # an edited file is read again
    assert C._caption_counts(config, tmp_path, []) == (10, 7)
    (tmp_path / "test.txt").write_bytes(b"a\n\xff\n")
    with pytest.raises(C.ConfigError, match=r"captions.eval_source: caption file .*test.txt is not UTF-8"):
        C.validate(config, root=tmp_path)
    (tmp_path / "test.txt").write_text((tmp_path / "train.txt").read_text())
    with pytest.raises(C.ConfigError, match="no training prompt is left"):
        C.validate(config, root=tmp_path)


def test_shipped_pickscore_files_load_with_their_counts():
    """Flow-GRPO's train.txt / test.txt: every line is a prompt; the dropped ones are exactly the repeats
    and the train/test overlap found here by an independent count; validation reads them in well under a second."""
    lines = {name: (PICKSCORE / name).read_bytes().decode().splitlines() for name in ("train.txt", "test.txt")}
    assert len(lines["train.txt"]) == 25432 and len(lines["test.txt"]) == 2048  # as Flow-GRPO ships them
    assert sum(len(p) > 300 for p in lines["train.txt"]) > 1000  # long prompts are what users have
    repeats = {n: len(ps) - len({collapsed(p) for p in ps}) for n, ps in lines.items()}
    overlap = len({collapsed(p) for p in lines["train.txt"]} & {collapsed(p) for p in lines["test.txt"]})

    start = time.process_time()
    files = [read_prompt_file(PICKSCORE / name) for name in ("train.txt", "test.txt")]
    chosen = choose(files[0], files[1], None, 0)
    seconds = time.process_time() - start
    assert [f.prompts for f in files] == [lines["train.txt"], lines["test.txt"]]  # no line dropped while reading
    assert len(chosen.train) == 25432 - repeats["train.txt"] - overlap
    assert len(chosen.eval) == 2048 - repeats["test.txt"]
    assert f"{repeats['train.txt']} duplicate(s) dropped" in chosen.notes[0]
    assert f"{overlap} training prompt(s) also in captions.eval_source" in "\n".join(chosen.notes)
    assert seconds < 0.5, f"reading and choosing the Pick-a-Pic prompts took {seconds:.2f} s of CPU"

    start = time.process_time()
    counts = C._caption_counts(C.deep_merge(BASE, PAPER), ROOT, errors := [])
    seconds = time.process_time() - start
    assert errors == [] and counts == (len(chosen.train), len(chosen.eval))
    assert seconds < 0.5, f"config validation's caption count took {seconds:.2f} s of CPU"
    readme = (PICKSCORE / "README.md").read_text()
    for name in ("train.txt", "test.txt"):  # the README's checksums are the files'
        assert f"{hashlib.sha256((PICKSCORE / name).read_bytes()).hexdigest()} | {name}" in readme


def test_paper_config_merged_onto_the_default_is_valid():
    """Snakemake lays --configfile config/paper.yaml over config/config.yaml: its eval_fraction: null
    must replace the default's 0.25, or the two caption keys would contradict each other."""
    merged = C.deep_merge(BASE, PAPER)
    assert merged["captions"] == {"source": "data/pickscore/train.txt", "eval_source": "data/pickscore/test.txt",
                                  "eval_fraction": None}
    C.validate(merged, root=ROOT)
    C.validate(PAPER, root=ROOT)


def old_split(prompts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """The caption stage's split before eval_source existed (commit 76906a0), written out again."""
    n = len(prompts)
    order = np.random.default_rng(seed).permutation(n)
    n_eval = min(n - 1, max(1, round(eval_fraction * n)))
    return [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]


def test_default_toy_split_is_unchanged(tmp_path):
    """The embedded default's caption tables are what the old split made (a guard: passes before and after)."""
    from diversegrpo.worlds import toy as world

    c = BASE["captions"]
    assert c["source"] == "toy" and c["eval_source"] is None
    make_captions(
        c["source"],
        c["eval_source"],
        c["eval_fraction"],
        BASE["seed"],
        tmp_path / "train.parquet",
        tmp_path / "eval.parquet",
    )
    expected = old_split([w["prompt"] for w in world.captions()], c["eval_fraction"], BASE["seed"])
    for name, prompts in zip(("train", "eval"), expected):
        table = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert list(table.columns) == ["prompt_id", "prompt", "split"]
        assert table.prompt.tolist() == prompts and set(table.split) == {name}
        assert table.prompt_id.tolist() == [hashlib.sha1(p.encode()).hexdigest()[:12] for p in prompts]


def test_an_edited_prompt_file_reruns_the_caption_stage(tmp_path):
    """Fails before: the rule declared no input, so a changed prompt file left stale caption tables.
    Dry runs only (the paper world's weights are absent): outputs newer than the files are up to date,
    a newer evaluation file reruns the stage."""
    from workflow_helpers import copy_repo

    repo = copy_repo(tmp_path / "repo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def dry_run() -> str:
        result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml",
                                 "--until", "captions"], cwd=repo, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    (repo / "results/captions").mkdir(parents=True)
    for name in ("train", "eval"):
        (repo / f"results/captions/{name}.parquet").write_bytes(b"")
    assert "rule captions:" not in dry_run()
    later = time.time() + 5
    os.utime(repo / "data/pickscore/test.txt", (later, later))
    rerun = dry_run()
    assert "input: data/pickscore/train.txt, data/pickscore/test.txt" in rerun, rerun[-3000:]
    assert re.search(r"rule captions:.*?reason: Updated input files: data/pickscore/test.txt", rerun, re.S), rerun[
        -3000:
    ]
