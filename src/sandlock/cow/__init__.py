"""Copy-on-write workdir: the on-disk branch a sandboxed run writes into.

- `storage`: where branches live (a private per-user base directory).
- `layer.Layer`: the merged view (upper over the workdir, minus whiteouts)
  that the supervisor maps the child's file syscalls onto.
- `branch.Branch`: what the caller does after the run: list the changes,
  diff, commit (durably, with a conflict check), abort, keep or recover.

The upper directory and the two logs are the only interface between the
supervisor (Layer) and the caller (Branch).
"""
