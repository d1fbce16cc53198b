#!/usr/bin/env bash
# Run by Snakemake once, inside the new conda environment, from its working directory (the repository
# root, where the Snakefile is). The install is editable, as make's: the rules run the checked-out code.
set -euo pipefail
if [ ! -f pyproject.toml ] || [ ! -f constraints.txt ]; then
    echo "diversegrpo.post-deploy.sh: run snakemake from the repository root (no pyproject.toml here: $PWD)" >&2
    exit 1
fi
python -m pip install --disable-pip-version-check -c constraints.txt -e .
