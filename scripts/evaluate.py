"""Stage entry: snakemake rules `evaluate` and `evaluate_base`."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.evaluate import evaluate_stage  # noqa: E402

s = snakemake.params.settings  # noqa: F821
evaluate_stage(snakemake.input.samples, snakemake.input.base, s["features"], s["world"], s["labels"],  # noqa: F821
               snakemake.output[0], s.get("torch_threads"))  # noqa: F821
