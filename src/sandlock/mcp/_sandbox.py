"""McpSandbox: tools over a workspace, each call in a fresh sandbox.

No MCP SDK import here either: the SDK is only needed to serve the tools
(sandlock.mcp.server).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import selectors
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

from ..exceptions import SandlockError
from ..sandbox import ExitReason, Sandbox, StdioMode
from ._policy import check_grantable, policy_for_tool, validate_capabilities

__all__ = ["McpSandbox", "ToolSpec", "ToolOutput", "capabilities_from_mcp_tool", "run_capped"]

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT = 1 << 20  # bytes of stdout (and as much of stderr) kept per call
CAPABILITY_PREFIX = "sandlock:"

_WORKER_SOURCE: str | None = None


def _worker_source() -> str:
    global _WORKER_SOURCE
    if _WORKER_SOURCE is None:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py"),
                  encoding="utf-8") as f:
            _WORKER_SOURCE = f.read()
    return _WORKER_SOURCE


@dataclasses.dataclass
class ToolOutput:
    """What one sandboxed run gave."""
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    truncated: bool = False
    error: str | None = None  # the sandbox's own failure (the command may not have run)

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


def run_capped(sb: Sandbox, cmd: Sequence[str], timeout: float, max_output: int) -> ToolOutput:
    """Run `cmd` in `sb` with stdin /dev/null, reading stdout and stderr while
    it runs: at most `max_output` bytes of each are kept, and past that (or
    past `timeout` seconds) the whole sandbox is killed."""
    proc = sb.popen(list(cmd), stdin=StdioMode.NULL, stdout=StdioMode.PIPED, stderr=StdioMode.PIPED)
    bufs: dict[int, bytearray] = {}
    truncated = timed_out = False
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    try:
        for f in (proc.stdout, proc.stderr):
            assert f is not None
            bufs[f.fileno()] = bytearray()
            sel.register(f.fileno(), selectors.EVENT_READ)
        open_fds = len(bufs)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                proc.kill()
                break
            for key, _ in sel.select(min(left, 1.0)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    open_fds -= 1
                    continue
                buf = bufs[key.fd]
                room = max_output - len(buf)
                buf += data[:room]
                if len(data) > room:
                    truncated = True
            if truncated:
                proc.kill()
                break
        result = proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
    finally:
        sel.close()
        if proc.result is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    out, err = (bytes(b) for b in bufs.values())  # registered stdout first, then stderr
    if result.reason == ExitReason.TIMEOUT:
        timed_out = True
    error = None
    if result.reason is None:
        error = result.error or "the sandbox failed"
    elif result.reason == ExitReason.EXITED and result.exit_code == 127 and result.error:
        error = result.error
    elif result.reason == ExitReason.KILLED and not (timed_out or truncated) and result.error:
        error = result.error  # e.g. the memory limit
    return ToolOutput(result.exit_code if result.reason == ExitReason.EXITED else -1,
                      out, err, timed_out, truncated, error)


@dataclasses.dataclass
class ToolSpec:
    """One tool: its MCP definition and how a call runs."""
    name: str
    description: str
    input_schema: dict
    capabilities: dict
    kind: str  # "shell" | "python" | "read_file" | "write_file" | "list_files" | "function"
    func: Callable | None = None
    module: str | None = None
    qualname: str | None = None
    syspath: str | None = None
    wants_workspace: bool = False

    def definition(self) -> dict:
        """The tool as MCP lists it (wire field names)."""
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


def _schema(props: dict[str, str], required: Sequence[str]) -> dict:
    return {"type": "object",
            "properties": {k: {"type": "string", "description": d} for k, d in props.items()},
            "required": list(required), "additionalProperties": False}


_BUILTINS: dict[str, tuple[str, dict, dict]] = {
    "shell": ("Run a shell command (/bin/sh -c) in the workspace, in a fresh sandbox: the workspace "
              "is writable, system directories are read-only, no network, a clean environment. "
              "Returns stdout, stderr and the exit code.",
              _schema({"command": "the shell command"}, ["command"]),
              {"fs_writable": ["."]}),
    "python": ("Run Python code (python -I -c) in the workspace, in a fresh sandbox: the workspace and "
               "system directories are read-only, no network, a clean environment, 256 MiB of memory. "
               "Returns what it prints.",
               _schema({"code": "the Python source"}, ["code"]),
               {"max_memory": "256M"}),
    "read_file": ("Read a text file of the workspace (a path relative to the workspace).",
                  _schema({"path": "relative path in the workspace"}, ["path"]), {}),
    "write_file": ("Write a text file in the workspace (a path relative to the workspace), creating "
                   "directories as needed.",
                   _schema({"path": "relative path in the workspace", "content": "the text to write"},
                           ["path", "content"]),
                   {"fs_writable": ["."]}),
    "list_files": ("List a directory of the workspace (relative path, default: the workspace itself).",
                   _schema({"subdir": "relative path in the workspace"}, []), {}),
}
BUILTIN_TOOLS = tuple(_BUILTINS)

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
               dict: "object"}


def _import_root(func: Callable) -> tuple[str, str, str]:
    """(module name, qualname, sys.path directory) to import `func` from, or
    ValueError when it cannot be imported by name in a fresh interpreter."""
    what = getattr(func, "__qualname__", repr(func))
    if not inspect.isfunction(func):
        raise ValueError(f"cannot sandbox {what!r}: expected a plain function")
    qualname = func.__qualname__
    if "<" in qualname or "." in qualname:
        raise ValueError(f"cannot sandbox {qualname!r}: lambdas, methods and nested functions cannot be "
                         "imported by name; define the tool as a top-level function of a module")
    module_name = func.__module__
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module is None or not path:
        raise ValueError(f"cannot sandbox {qualname!r}: its module {module_name!r} has no file")
    if module_name == "__main__":
        spec = getattr(module, "__spec__", None)
        module_name = spec.name if spec is not None else os.path.splitext(os.path.basename(path))[0]
    root = os.path.dirname(os.path.abspath(path))
    levels = module_name.count(".") + (1 if os.path.basename(path) == "__init__.py" else 0)
    for _ in range(levels):
        root = os.path.dirname(root)
    return module_name, qualname, root


def _signature_schema(func: Callable) -> tuple[dict, bool]:
    sig = inspect.signature(func)
    props: dict[str, Any] = {}
    required = []
    wants_workspace = False
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ValueError(f"cannot sandbox {func.__qualname__!r}: parameter {name!r} must be a "
                             "keyword parameter")
        if name == "workspace":
            wants_workspace = True  # injected, hidden from the schema
            continue
        ann = p.annotation
        props[name] = {"type": _JSON_TYPES[ann]} if ann in _JSON_TYPES else {}
        if p.default is p.empty:
            required.append(name)
    return {"type": "object", "properties": props, "required": required}, wants_workspace


def capabilities_from_mcp_tool(tool: Any) -> dict:
    """The `sandlock:<field>` entries of an MCP tool definition's
    `annotations` and `_meta`, prefix removed. `tool` is an SDK `Tool` or
    its wire form (a dict); an SDK whose ToolAnnotations drop unknown keys
    (mcp 2.x) leaves only `_meta` to carry them.

    Only for tool definitions you trust: nothing in sandlock.mcp applies
    what a remote server declares for its own tools (G5); `sandlock-mcp
    wrap` sandboxes such a server as a whole, with the policy you give it.
    """
    caps: dict[str, Any] = {}
    for attr in ("annotations", "meta", "_meta"):
        source = tool.get(attr) if isinstance(tool, Mapping) else getattr(tool, attr, None)
        if source is None:
            continue
        if not isinstance(source, Mapping):
            extra = getattr(source, "model_extra", None) or {}
            dump = getattr(source, "model_dump", None)
            source = {**(dump(by_alias=True) if dump is not None else {}), **extra}
        for key, value in source.items():
            if isinstance(key, str) and key.startswith(CAPABILITY_PREFIX) and value is not None:
                caps[key[len(CAPABILITY_PREFIX):]] = value
    return caps


class McpSandbox:
    """Tools over a workspace directory; every call runs in a fresh sandbox.

    `workspace`: the directory the tools work in (created if missing);
    None makes a private temporary one, removed by close(). `timeout`:
    seconds per call. `max_output`: bytes of output kept per call (the call
    is killed past it). `allowed_paths`: directories a tool's capabilities
    may grant besides the workspace. `allow_network`: whether a tool may
    declare network capabilities. `builtins`: register shell, python,
    read_file, write_file and list_files (True), none (False) or the named
    ones.
    """

    def __init__(self, workspace: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_output: int = DEFAULT_MAX_OUTPUT, allowed_paths: Sequence[str] = (),
                 allow_network: bool = False, builtins: bool | Sequence[str] = True) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 86400:
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise ValueError(f"max_output: expected a positive number of bytes, got {max_output!r}")
        self._owned_workspace = workspace is None
        if workspace is None:
            workspace = tempfile.mkdtemp(prefix="sandlock-mcp-")
        else:
            workspace = os.path.abspath(workspace)
            os.makedirs(workspace, mode=0o700, exist_ok=True)
        self.workspace = check_grantable(workspace, "workspace")
        self.timeout = float(timeout)
        self.max_output = max_output
        self.allowed_paths = tuple(check_grantable(os.path.abspath(p), "allowed_paths") for p in allowed_paths)
        self.allow_network = bool(allow_network)
        self.tools: dict[str, ToolSpec] = {}
        names = BUILTIN_TOOLS if builtins is True else () if builtins is False else tuple(builtins)
        for name in names:
            if name not in _BUILTINS:
                raise ValueError(f"builtins: unknown tool {name!r} (known: {', '.join(BUILTIN_TOOLS)})")
            desc, schema, caps = _BUILTINS[name]
            self._add(ToolSpec(name, desc, schema, self._check_caps(caps), name))

    # -- tools -------------------------------------------------------------

    def _check_caps(self, caps: Mapping[str, Any] | None) -> dict:
        validate_capabilities(caps, workspace=self.workspace, allowed_paths=self.allowed_paths,
                              allow_network=self.allow_network)
        return dict(caps or {})

    def _add(self, spec: ToolSpec) -> None:
        if not isinstance(spec.name, str) or not spec.name or len(spec.name) > 128:
            raise ValueError(f"tool name: expected a non-empty string, got {spec.name!r}")
        self.tools[spec.name] = spec

    def add_tool(self, name: str, func: Callable, *, description: str = "",
                 capabilities: Mapping[str, Any] | None = None, input_schema: dict | None = None) -> None:
        """Register `func` (a top-level function of an importable module) as
        tool `name`. A call imports its module in a fresh interpreter inside
        the sandbox and calls it with the arguments as keywords; a parameter
        named `workspace` receives the workspace path (the caller cannot set
        it). A str result is returned as is, anything else as JSON. The
        module's directory is readable in the sandbox, so guard start-up
        code with `if __name__ == "__main__":`."""
        module, qualname, root = _import_root(func)
        root = check_grantable(root, f"tool {name}: the directory of module {module}")
        schema, wants_ws = _signature_schema(func)
        if input_schema is not None:
            if not isinstance(input_schema, dict) or input_schema.get("type") != "object":
                raise ValueError(f"tool {name}: input_schema must be a JSON schema of type object")
            schema = input_schema
        self._add(ToolSpec(name, description or (inspect.getdoc(func) or ""), schema,
                           self._check_caps(capabilities), "function", func, module, qualname, root,
                           wants_ws))

    def get_policy(self, name: str, *, tmpdir: str | None = None) -> Sandbox:
        """The Sandbox a call of tool `name` runs in (KeyError when unknown)."""
        spec = self.tools[name]
        extra = [spec.syspath] if spec.syspath else []
        return policy_for_tool(workspace=self.workspace, capabilities=spec.capabilities,
                               extra_readable=extra, allowed_paths=self.allowed_paths,
                               allow_network=self.allow_network,
                               system=spec.kind in ("shell", "python", "function"), tmpdir=tmpdir)

    def tool_definitions(self) -> list[dict]:
        """The tools as MCP lists them."""
        return [t.definition() for t in self.tools.values()]

    def tool_definitions_openai(self) -> list[dict]:
        """The tools in OpenAI's function-calling format."""
        return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.input_schema}}
                for t in self.tools.values()]

    # -- calls -------------------------------------------------------------

    def _command(self, spec: ToolSpec, args: dict) -> list[str]:
        if spec.kind == "shell":
            return ["/bin/sh", "-c", _string_arg(args, "command")]
        if spec.kind == "python":
            return [sys.executable, "-I", "-c", _string_arg(args, "code")]
        worker = [sys.executable, "-I", "-S", "-c", _worker_source()]
        ws = self.workspace
        if spec.kind == "read_file":
            payload: dict[str, Any] = {"workspace": ws, "path": _string_arg(args, "path"),
                                       "limit": self.max_output}
        elif spec.kind == "write_file":
            payload = {"workspace": ws, "path": _string_arg(args, "path"),
                       "content": _string_arg(args, "content")}
        elif spec.kind == "list_files":
            payload = {"workspace": ws, "subdir": _string_arg(args, "subdir", "")}
        else:
            worker = [sys.executable, "-I", "-c", _worker_source()]
            payload = {"syspath": spec.syspath, "module": spec.module, "qualname": spec.qualname,
                       "workspace": ws, "wants_workspace": spec.wants_workspace,
                       "arguments": {k: v for k, v in args.items() if k != "workspace"}}
            return [*worker, "call", json.dumps(payload)]
        return [*worker, spec.kind, json.dumps(payload)]

    def run_tool(self, name: str, arguments: Mapping[str, Any] | None = None, *,
                 timeout: float | None = None) -> tuple[str, bool]:
        """Run one call in a fresh sandbox: (text for the model, is_error).
        Blocking; the server runs it in a worker thread."""
        spec = self.tools.get(name)
        if spec is None:
            return f"Unknown tool: {name}", True
        args = dict(arguments or {})
        limit = self.timeout if timeout is None else min(float(timeout), self.timeout)
        tmpdir = tempfile.mkdtemp(prefix="sandlock-mcp-tmp-") if spec.kind in ("shell", "python",
                                                                                  "function") else None
        try:
            try:
                cmd = self._command(spec, args)
                sb = self.get_policy(name, tmpdir=tmpdir)
                out = run_capped(sb, cmd, limit, self.max_output)
            except (ValueError, SandlockError, OSError) as e:
                return f"Error: {e}", True
        finally:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
        return _render(spec.kind, out, limit, self.max_output)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None, *,
                        timeout: float | None = None) -> str:
        """Run tool `name` in a fresh sandbox (in a worker thread) and return
        its text; RuntimeError when it fails, KeyError when unknown."""
        import anyio
        if name not in self.tools:
            raise KeyError(name)
        text, is_error = await anyio.to_thread.run_sync(
            lambda: self.run_tool(name, arguments, timeout=timeout))
        if is_error:
            raise RuntimeError(f"Sandboxed tool {name!r} failed: {text}")
        return text

    def close(self) -> None:
        """Remove the workspace if this McpSandbox created it."""
        if self._owned_workspace:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self._owned_workspace = False

    def __enter__(self) -> "McpSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _string_arg(args: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if value is None:
        raise ValueError(f"missing argument {key!r}")
    if not isinstance(value, str):
        raise ValueError(f"argument {key!r} must be a string")
    return value


def _render(kind: str, out: ToolOutput, timeout: float, max_output: int) -> tuple[str, bool]:
    stdout = out.stdout.decode("utf-8", errors="replace")
    stderr = out.stderr.decode("utf-8", errors="replace")
    notes = []
    if out.truncated:
        notes.append(f"[output truncated at {max_output} bytes; the command was stopped]")
    if out.timed_out:
        notes.append(f"[timed out after {timeout:g} s; the command was killed]")
    if out.error:
        notes.append(f"[sandbox: {out.error}]")
    if kind in ("shell", "python"):
        parts = [stdout] if stdout else []
        if stderr:
            parts.append(stderr)
        parts += notes
        parts.append(f"[exit code: {out.exit_code}]")
        return "\n".join(p.rstrip("\n") for p in parts), not out.success
    if out.success:
        return "\n".join([stdout, *notes]) if notes else stdout, False
    msg = stderr.strip() or out.error or f"exit {out.exit_code}"
    return "\n".join([f"Error: {msg}", *notes]), True

