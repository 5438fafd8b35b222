"""Read, change, write only if unchanged: the one retry loop of the services that edit a stored document.

Another container may write the same document between this read and this write (two edits of one draft, an edit
racing a deletion). The store's guarded write then refuses (Conflict) and the whole step runs again on what the other
wrote, so neither edit is lost and a document deleted meanwhile is a 404, never written back live. A refusal of the
step itself (a 404, a 409 for a state the edit does not allow, a 400) is raised at once: retrying it could change
the answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from billow.errors import Conflict

EDIT_ATTEMPTS: Final = 10  # writers editing one document at once that one edit outlasts


def until_written[T](step: Callable[[], tuple[T, Callable[[], None] | None]]) -> T:
    """Run `step`: it reads and edits (raising to refuse) and returns (the result, its guarded write), or (the
    result, None) when there is nothing to write. A Conflict from the write (the document changed since the read)
    runs `step` again, at most EDIT_ATTEMPTS times in all; the last one's Conflict is raised."""
    attempt = 0
    while True:
        attempt += 1
        result, write = step()
        if write is None:
            return result
        try:
            write()
        except Conflict:
            if attempt == EDIT_ATTEMPTS:
                raise
            continue
        return result
