"""Stage entry: snakemake rules `sample` and `sample_base`."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.sample import sample_stage  # noqa: E402

s = snakemake.params.settings  # noqa: F821
captions = {"eval": snakemake.input.eval, "train": snakemake.input.train}  # noqa: F821
sample_stage(s["backbone"], snakemake.params.lora, captions, s["sample"]["images_per_prompt"],  # noqa: F821
             s["sample"].get("max_prompts"), s["rewards"], s["seed"], s["device"], s["torch_threads"],
             snakemake.output[0])  # noqa: F821
