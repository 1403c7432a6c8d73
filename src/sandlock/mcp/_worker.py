"""The program a tool call runs inside its sandbox (standard library only).

It is passed to the interpreter with `-c` (so no file of the sandlock
package needs to be readable in the sandbox) and never imports sandlock or
the MCP SDK: starting it costs an interpreter start, nothing more.

    python -I [-S] -c SOURCE MODE ARGS_JSON

MODE is one of:
  read_file   {"workspace", "path", "limit"}        print the file's text
  write_file  {"workspace", "path", "content"}      write it, creating directories
  list_files  {"workspace", "subdir"}               "dir  name" / "file  name" lines
  call        {"syspath", "module", "qualname", "workspace", "arguments"}
              import MODULE, call QUALNAME(**arguments) (workspace injected)

Paths are checked lexically here (relative, no `..` out of the workspace),
only to give a clear message: symlinks are not resolved here on purpose.
Where a path really leads is the sandbox's business (Landlock checks the
object the kernel reaches), so a symlink pointing out of the workspace
fails with EACCES from the kernel, not from this code.

Exit status: 0 success, 1 the tool failed (message on stderr), 2 bad usage.
"""
import json
import os
import sys


def _fail(msg, status=1):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
    sys.exit(status)


def _inside(workspace, rel):
    if not isinstance(rel, str):
        _fail("path must be a string")
    if "\0" in rel:
        _fail("path must not contain NUL")
    if os.path.isabs(rel):
        _fail("path must be relative to the workspace: %r" % rel)
    joined = os.path.normpath(os.path.join(workspace, rel))
    if joined != workspace and not joined.startswith(workspace.rstrip("/") + "/"):
        _fail("path leaves the workspace: %r" % rel)
    return joined


def read_file(a):
    path = _inside(a["workspace"], a["path"])
    limit = int(a.get("limit", 1 << 20))
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        _fail("cannot read %s: %s" % (a["path"], e.strerror))
    text = data[:limit].decode("utf-8", errors="replace")
    sys.stdout.write(text)
    if len(data) > limit:
        sys.stdout.write("\n[truncated at %d bytes]" % limit)


def write_file(a):
    path = _inside(a["workspace"], a["path"])
    content = a.get("content", "")
    if not isinstance(content, str):
        _fail("content must be a string")
    data = content.encode("utf-8")
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        _fail("cannot write %s: %s" % (a["path"], e.strerror))
    sys.stdout.write("Wrote %d bytes to %s" % (len(data), a["path"]))


def list_files(a):
    path = _inside(a["workspace"], a.get("subdir") or ".")
    try:
        with os.scandir(path) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    except OSError as e:
        _fail("cannot list %s: %s" % (a.get("subdir") or ".", e.strerror))
    if not entries:
        sys.stdout.write("(empty)")
        return
    sys.stdout.write("\n".join(("dir   " if d else "file  ") + n for n, d in entries))


def call(a):
    import importlib
    sys.path.insert(0, a["syspath"])
    obj = importlib.import_module(a["module"])
    for part in a["qualname"].split("."):
        obj = getattr(obj, part)
    kwargs = dict(a.get("arguments") or {})
    if a.get("wants_workspace"):
        kwargs["workspace"] = a["workspace"]  # injected: the caller's value never wins
    result = obj(**kwargs)
    if isinstance(result, str):
        sys.stdout.write(result)
    else:
        sys.stdout.write(json.dumps(result, default=str))


MODES = {"read_file": read_file, "write_file": write_file, "list_files": list_files, "call": call}


def main(argv):
    if len(argv) != 2 or argv[0] not in MODES:
        _fail("usage: MODE ARGS_JSON", 2)
    try:
        args = json.loads(argv[1])
    except ValueError as e:
        _fail("bad arguments: %s" % e, 2)
    if not isinstance(args, dict):
        _fail("bad arguments: expected an object", 2)
    MODES[argv[0]](args)
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
