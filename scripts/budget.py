"""Stage entry: snakemake rules `budget` and `budget_base`."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.budget import BudgetSettings, budget_stage  # noqa: E402

budget_stage(BudgetSettings(**snakemake.params.settings), snakemake.params.lora, snakemake.input.eval,  # noqa: F821
             snakemake.output[0])  # noqa: F821
