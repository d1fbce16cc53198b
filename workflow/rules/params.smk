# Params files: a job's settings as a file under results/params/, so that a changed hyper-parameter reruns
# the jobs it belongs to by Snakemake's mtime trigger alone, without the params records that Snakemake
# keeps in .snakemake/ (lost with that folder, never made by `dvc pull`). Plain Python (no Snakemake
# directive), so that tests can load it on its own; common.smk wires it to the rules (tracked_params).
import hashlib
import json
import os
import time

# The mtime of a params file whose content the job's outputs are trusted to have been made with: one
# written where none was (a new tree, or outputs older than this mechanism) or one restored by a revert.
# Such a file is no input of the job (Snakemake would otherwise record a new input set, and its `input`
# trigger would rerun every job of a tree made before params files existed); every other file is one.
TRUSTED_MTIME_NS = 946_684_800 * 10**9  # 2000-01-01 00:00 UTC


def params_bytes(content) -> bytes:
    """Canonical JSON: the same settings give the same bytes whatever their key order."""
    return (json.dumps(content, sort_keys=True, indent=1, default=str) + "\n").encode()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _history(path: str) -> list[tuple[int, int, str]]:
    """(since, mtime, digest) per line of PATH.history: from `since` (ns, wall clock) on, the params file
    held `digest` with mtime `mtime`. Unreadable lines are skipped: a shorter history only ever reruns."""
    entries = []
    try:
        with open(path + ".history") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
                    entries.append((int(parts[0]), int(parts[1]), parts[2]))
    except FileNotFoundError:
        pass
    return entries


def _outputs_built_ns(outputs) -> int | None:
    """When the job's outputs were last made (the oldest one's mtime); None when one is missing (the job
    reruns anyway)."""
    try:
        return min(os.stat(o).st_mtime_ns for o in outputs) if outputs else None
    except FileNotFoundError:
        return None


# Not diversegrpo.io.atomic_path: importing io (torch) costs 1.3 s, at every snakemake start.
def _write_atomically(path: str, data: bytes, mtime_ns: int | None) -> int:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, path)
    return os.stat(path).st_mtime_ns


def sync_params_file(path: str, content, outputs) -> bool:
    """Make PATH hold CONTENT; return whether PATH is to be an input of the job (False: trusted, see
    TRUSTED_MTIME_NS). Unchanged content costs one read. A change is written atomically, with:

    - the mtime of the content the job's outputs were made with, when CONTENT is that content again (a
      dry run or an unfinished run with other settings, then back: nothing reruns). The history file says
      which content the file held when the outputs were last written.
    - the current time otherwise: the file is newer than the outputs, and the job reruns.
    """
    data = params_bytes(content)
    try:
        with open(path, "rb") as f:
            old = f.read()
            if old == data:
                return os.fstat(f.fileno()).st_mtime_ns != TRUSTED_MTIME_NS
    except FileNotFoundError:
        old = None
    digest, history = _digest(data), _history(path)
    mtime = since = None  # now: newer than the outputs, the job reruns
    if old is None and not history:
        # never seen: trust the outputs there are (made before params files existed, or none yet)
        mtime, since = TRUSTED_MTIME_NS, 0
    elif old is not None and history and history[-1][2] == _digest(old):
        # (a history that does not end with the file's content was cut short: rerun rather than guess)
        built = _outputs_built_ns(outputs)
        made_with = [e for e in history if built is not None and e[0] <= built]
        if made_with and made_with[-1][2] == digest:
            mtime, since = made_with[-1][1], time.time_ns()
    written = _write_atomically(path, data, mtime)
    with open(path + ".history", "a") as f:
        f.write(f"{written if since is None else since} {written} {digest}\n")
    return written != TRUSTED_MTIME_NS
