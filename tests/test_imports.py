"""What the toy world's jobs import, in a fresh interpreter: every train / sample job pays its imports
(benchmarks/job_overhead.py measures them), so an eager import of a heavy package fails here.

Not asserted because not true: after a toy job has built its backbone, transformers and peft are
loaded. diffusers' model classes load them themselves (diffusers.hooks imports peft whenever it is
installed, and peft imports transformers), through any import path of SD3Transformer2DModel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One process for both tests: the stages' modules imported, then one toy job's use of its backbone
# (build, LoRA attached, written and read back, sampled, scored), its sys.modules recorded after each.
SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path

import diversegrpo.backbones.toy, diversegrpo.rewards.toy, diversegrpo.features.toy  # noqa: E401
import diversegrpo.registry, diversegrpo.stages.train, diversegrpo.stages.sample  # noqa: E401
import diversegrpo.stages.evaluate  # noqa: E401
import diversegrpo.stages.pretrain  # noqa: E401
after_imports = sorted(sys.modules)

from diversegrpo.backbones.base import LoraSpec
from diversegrpo.backbones.toy import ToyBackbone, ToyConfig
from diversegrpo.registry import build_features, build_reward
from diversegrpo.sampling import sample_images

backbone = ToyBackbone(ToyConfig(num_layers=1, attention_head_dim=8))
backbone.add_lora(LoraSpec(rank=2, alpha=2.0, target_modules=backbone.lora_targets))
with tempfile.TemporaryDirectory() as tmp:
    backbone.save_lora(Path(tmp) / "lora")
    backbone.load_lora(Path(tmp) / "lora")
images = sample_images(backbone, ["a red disc", "a blue cross"], 2, 1.0, seed=0)
build_reward({"kind": "toy_colour"})(images, ["a red disc", "a blue cross"])
build_features({"kind": "toy"})(images)
print(json.dumps({"after_imports": after_imports, "after_job": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {k: set(v) for k, v in json.loads(result.stdout.splitlines()[-1]).items()}


def test_importing_the_toy_stages_loads_no_model_library(loaded):
    """The stages' modules defer diffusers (and with it peft, transformers) to the backbone's construction:
    the evaluate stage never pays for them, and the workflow's own imports stay light."""
    heavy = {"diffusers", "peft", "transformers", "accelerate"} & loaded["after_imports"]
    assert not heavy, f"imported eagerly by a toy stage's modules: {sorted(heavy)}"


def test_a_toy_job_loads_no_diffusers_pipeline_nor_text_encoder(loaded):
    """The toy backbone writes its LoRA with SD3LoraLoaderMixin, not StableDiffusion3Pipeline, whose
    import brought diffusers.pipelines and transformers' CLIP and T5 models into every toy job."""
    assert "diffusers.models.transformers.transformer_sd3" in loaded["after_job"]  # the job did use diffusers
    unwanted = sorted(
        m for m in loaded["after_job"]
        if m.startswith(("diffusers.pipelines", "transformers.models.clip", "transformers.models.t5"))
    )
    assert not unwanted, f"a toy job imported {len(unwanted)} modules it never uses: {unwanted[:8]}"


def test_the_workflow_parse_imports_no_torch_nor_pandas():
    """Every snakemake call, a no-op rerun included, parses the Snakefile and its rule files: their module-level
    imports of the package must stay light (importing torch and pandas took 2.5 s of a 3-second budget for the
    no-op)."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    lines = [line for f in files for line in f.read_text().splitlines()]
    imports = [line for line in lines if line.startswith(("from diversegrpo", "import diversegrpo"))]
    assert imports, "the workflow imports nothing of the package: this test reads the wrong lines"
    script = "\n".join([*imports, "import json, sys", "print(json.dumps(sorted(sys.modules)))"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    heavy = {"torch", "pandas", "numpy", "pyarrow"} & set(json.loads(result.stdout.splitlines()[-1]))
    assert not heavy, f"the workflow's imports load {sorted(heavy)}"
