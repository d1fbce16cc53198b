"""A copy of the repository for tests that run the workflow: tracked and untracked-but-not-ignored
files, without results, DVC's cache and lock, so that a developer's own results/ are never touched."""

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
