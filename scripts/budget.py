"""Stage entry: snakemake rules `budget` and `budget_base`."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.budget import budget_stage  # noqa: E402

s = snakemake.params.settings  # noqa: F821
budget_stage(s["backbone"], s["rollout"], snakemake.params.lora, snakemake.input.eval,  # noqa: F821
             s["analyses"]["budget_prompts"], s["analyses"]["budget_branches"], s["features"], s["world"],
             s["seed"], s["device"], s["torch_threads"], snakemake.output[0], s["micro_batch"])  # noqa: F821
