# Wiring only: each stage lives in workflow/rules/<stage>.smk; common.smk validates the config and
# builds the run matrix; params.smk keeps each job's settings in a file (a changed one reruns the job).
# The embedded default runs with `snakemake --cores all`, which picks up the local profile from
# profiles/default (a link to workflow/profiles) next to this file.
from snakemake.utils import min_version

min_version("8.20")


configfile: "config/config.yaml"


# `snakemake --report report.html`: Table 1, the Pareto fronts, the training curves and the image grids
# (the outputs flagged report() in report.smk), with this description on the report's first page.
report: "workflow/report/workflow.rst"


include: "workflow/rules/params.smk"
include: "workflow/rules/common.smk"


rule all:
    input:
        all_targets,


include: "workflow/rules/captions.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/analyses.smk"
include: "workflow/rules/sweeps.smk"
