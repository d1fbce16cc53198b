"""Helpers of the tests that run the workflow: a copy of the repository (tracked and
untracked-but-not-ignored files, without results, DVC's cache and lock, so that a developer's own
results/ are never touched) and the jobs a Snakemake log lists."""

import collections
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = ("results/", ".dvc/cache", "dvc.lock")


def copy_repo(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if rel.startswith(SKIP) or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    (dest / "results").mkdir(parents=True, exist_ok=True)
    return dest


JOB_HEADER = re.compile(r"^(local)?rule (\w+):\s*$")


def jobs_in_log(text: str) -> collections.Counter:
    """Counter of (rule, 'backbone/reward/method' or '') over the jobs a (dry) run lists."""
    jobs, current = [], None
    for line in text.splitlines():
        m = JOB_HEADER.match(line)
        if m:
            current = [m.group(2), ""]
            jobs.append(current)
        elif current is not None and line.strip().startswith("wildcards:"):
            pairs = line.split("wildcards:", 1)[1].split(",")
            current[1] = "/".join(p.split("=", 1)[1].strip() for p in pairs)
        elif not line.strip():
            current = None
    return collections.Counter(tuple(j) for j in jobs)
