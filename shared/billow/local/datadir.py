"""One process per data dir: the embedded usage engine (chdb) opens its data path from one process only, and
`billow serve` keeps in-process state beside the data (the usage write journal, the balance cache the sink tells of
each write, the billing scheduler), so a second `billow serve` (or `billow migrate`) on the same data dir is refused
at start, naming the process that holds it, instead of starting, writing the meta database beside the first and
failing every usage request."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from billow.errors import BillowError

LOCK_FILE = "billow.lock"


class DataDirInUse(BillowError):
    status = 409
    title = "Conflict"


def hold(data_dir: str | Path) -> IO[str]:
    """Take the data dir's lock (an exclusive flock on `data_dir/billow.lock`, which the kernel releases when this
    process ends, however it ends) and keep it while the returned file stays open; the file records this process's
    id for the refusal of the next one. Raises DataDirInUse when another process holds it."""
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise DataDirInUse(f"data dir {path} is in use by another billow process (pid {holder}); stop it first, "
                           "or give this one another --data-dir") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
