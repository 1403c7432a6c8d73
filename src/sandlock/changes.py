"""What a run changed in its copy-on-write workdir: `Result.changes`.

A Change holds the entry before the run first touched the path and the
entry after; its `kind` is "A" (added), "M" (modified) or "D" (deleted).
The copy-on-write workdir that produces them has not landed yet: until it
does, `Result.changes` is always empty.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Entry:
    """One side of a Change."""
    kind: str               # "file", "dir", "symlink" or "other"
    mode: int               # permission bits
    size: int               # bytes, for a file; 0 otherwise
    digest: bytes | None    # SHA-256 of a file's bytes; None for anything else
    target: str | None      # a symlink's target, as stored; None otherwise

    def same_content(self, other: "Entry") -> bool:
        return (self.kind, self.digest, self.target) == (other.kind, other.digest, other.target)


@dataclass(frozen=True)
class Change:
    """One path (relative to the workdir) the run changed."""
    path: str
    before: Entry | None
    after: Entry | None

    @property
    def kind(self) -> str:
        if self.after is None:
            return "D"
        return "M" if self.before is not None else "A"

    @property
    def content_unchanged(self) -> bool:
        """Both sides exist with the same type and bytes (or link target):
        only metadata changed, or the same bytes were written again."""
        return (self.before is not None and self.after is not None
                and self.before.same_content(self.after))

    @property
    def type_changed(self) -> bool:
        return (self.before is not None and self.after is not None
                and self.before.kind != self.after.kind)

    def __str__(self) -> str:
        return f"{self.kind}  {self.path}"


def renames(changes: Sequence[Change]) -> list[tuple[str, str]]:
    """(old path, new path) pairs: a deleted file and an added file with the
    same digest. A digest that occurs on more than one deleted (or added)
    path is ambiguous, and none of its paths is paired."""
    def by_digest(pick) -> dict[bytes, str | None]:
        seen: dict[bytes, str | None] = {}
        for c in changes:
            entry = pick(c)
            if entry is None or entry.digest is None:
                continue
            seen[entry.digest] = None if entry.digest in seen else c.path
        return seen

    gone = by_digest(lambda c: c.before if c.after is None else None)
    new = by_digest(lambda c: c.after if c.before is None else None)
    pairs: list[tuple[str, str]] = []
    for digest, old in gone.items():
        added = new.get(digest)
        if old is not None and added is not None:
            pairs.append((old, added))
    return sorted(pairs)
