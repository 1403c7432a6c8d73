"""`sandlock-mcp`: serve an McpSandbox's tools over MCP, or sandbox another MCP server.

    sandlock-mcp [serve] [--workspace DIR] [--transport stdio|http] [--host H] [--port N]
                 [--token-file F] [--allow-remote-bind] [--allow-path DIR] [--allow-network]
                 [--timeout S] [--max-output BYTES] [--tools shell,python,...]
    sandlock-mcp wrap [-r PATH] [-w PATH] [--net-allow RULE] [-e K=V] [--pass-env K]
                      [--cwd DIR] [-m SIZE] -- CMD [ARGS...]

The MCP framing is the official SDK's (stdio and streamable HTTP
transports); this module only connects it to McpSandbox.

HTTP: bound to 127.0.0.1 by default; a non-loopback address needs
--allow-remote-bind. Every request needs `Authorization: Bearer TOKEN`
(compared in constant time): the token comes from --token-file or the
SANDLOCK_MCP_TOKEN environment variable, else one is generated and printed
to stderr. Host and Origin headers are checked on loopback binds (DNS
rebinding).

`wrap` runs a third-party MCP server (a stdio one) as a whole inside a
sandbox: the server and everything it starts get only the paths, network
and environment given here. Its tools' own claims (annotations) are not
consulted: the server is not trusted to describe its sandbox.
"""
from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import secrets
import signal
import sys
from typing import Any, Sequence

from .._version import __version__
from ..exceptions import SandlockError
from ._sandbox import BUILTIN_TOOLS, DEFAULT_MAX_OUTPUT, DEFAULT_TIMEOUT, McpSandbox

__all__ = ["build_server", "serve_stdio", "serve_http", "http_app", "wrap_policy", "wrap",
           "wrapped_server_parameters", "is_loopback", "main"]

TOKEN_ENV = "SANDLOCK_MCP_TOKEN"
LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
MCP_PATH = "/mcp"


# -- the MCP server object ----------------------------------------------------------------

def build_server(box: McpSandbox, *, name: str = "sandlock", max_concurrent: int = 4) -> Any:
    """A low-level MCP `Server` listing `box`'s tools and running each call in
    a worker thread (at most `max_concurrent` at a time), each in its own
    fresh sandbox."""
    import anyio
    import mcp.types as types
    from mcp.server.lowlevel import Server

    limiter = anyio.CapacityLimiter(max_concurrent)

    def tool_list() -> list:
        return [types.Tool.model_validate(d) for d in box.tool_definitions()]

    async def run(tool: str, arguments: dict | None) -> tuple[str, bool]:
        return await anyio.to_thread.run_sync(lambda: box.run_tool(tool, arguments), limiter=limiter)

    def text_result(text: str, is_error: bool) -> Any:
        return types.CallToolResult.model_validate(
            {"content": [{"type": "text", "text": text}], "isError": is_error})

    async def on_list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult.model_validate({"tools": [t.model_dump(by_alias=True, exclude_none=True)
                                                               for t in tool_list()]})

    async def on_call_tool(ctx: Any, params: Any) -> Any:
        return text_result(*await run(params.name, params.arguments))

    try:  # mcp 2.x: handlers are given to the constructor
        return Server(name, version=__version__, on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    except TypeError:  # mcp 1.x: decorators
        server = Server(name, version=__version__)

        async def _list() -> list:
            return tool_list()

        async def _call(tool: str, arguments: dict) -> list:
            text, is_error = await run(tool, arguments)
            if is_error:
                raise RuntimeError(text)  # 1.x answers a raising tool with isError=True and the text
            return [types.TextContent(type="text", text=text)]

        getattr(server, "list_tools")()(_list)  # noqa: B009 - absent from 2.x's type stubs
        getattr(server, "call_tool")()(_call)  # noqa: B009
        return server


async def serve_stdio(box: McpSandbox, **kw: Any) -> None:
    """Serve over stdin/stdout until the client closes stdin."""
    from mcp.server.stdio import stdio_server
    server = build_server(box, **kw)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _BearerAuth:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer
    <token>` (one header, compared in constant time), else 401."""

    def __init__(self, app: Any, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"]
        ok = False
        if len(values) == 1:
            scheme, _, cred = values[0].partition(b" ")
            ok = scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self._token)
        if not ok:
            await _plain(send, 401, b"unauthorized\n", [(b"www-authenticate", b'Bearer realm="sandlock-mcp"')])
            return
        await self.app(scope, receive, send)


async def _plain(send: Any, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def http_app(box: McpSandbox, token: str, *, host: str = "127.0.0.1", **kw: Any) -> tuple[Any, Any]:
    """(ASGI app, session manager) of the streamable HTTP transport at /mcp,
    behind the bearer token. Run it inside `async with manager.run():`."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    if is_loopback(host):
        security = TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                             allowed_hosts=LOOPBACK_HOSTS, allowed_origins=LOOPBACK_ORIGINS)
    else:  # clients use names we cannot know; the token still guards every request
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    manager = StreamableHTTPSessionManager(app=build_server(box, **kw), security_settings=security)

    async def route(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/") == MCP_PATH:
            await manager.handle_request(scope, receive, send)
        elif scope["type"] == "http":
            await _plain(send, 404, b"not found (the MCP endpoint is /mcp)\n")

    return _BearerAuth(route, token), manager


async def serve_http(box: McpSandbox, *, host: str = "127.0.0.1", port: int = 8080, token: str,
                     allow_remote_bind: bool = False, **kw: Any) -> None:
    """Serve the streamable HTTP transport on host:port until interrupted."""
    import uvicorn
    if not is_loopback(host) and not allow_remote_bind:
        raise ValueError(f"refusing to bind {host}: not a loopback address (pass --allow-remote-bind / "
                         "allow_remote_bind=True to serve the network, with the bearer token)")
    app, manager = http_app(box, token, host=host, **kw)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    async with manager.run():
        await uvicorn.Server(config).serve()


# -- wrap: a whole third-party MCP server in a sandbox --------------------------------------

def wrap_policy(*, fs_readable: Sequence[str] = (), fs_writable: Sequence[str] = (),
                net_allow: Sequence[str] = (), env: dict[str, str] | None = None,
                cwd: str | None = None, tmpdir: str | None = None,
                max_memory: str | int | None = "2G", max_processes: int = 128) -> Any:
    """The Sandbox of a wrapped MCP server: system directories and the
    running Python read-only (credentials in /etc denied), `fs_readable` /
    `fs_writable`, a private TMPDIR (also HOME), no network but
    `net_allow`, a cleared environment plus `env`. Paths are never `/` or
    a home directory."""
    from ..sandbox import Sandbox
    from ._policy import DENIED, DEVICES, SYSTEM_READABLE, TOOL_PATH, check_grantable, python_roots
    readable = [p for p in SYSTEM_READABLE if os.path.exists(p)] + python_roots()
    readable += [check_grantable(os.path.abspath(p), "fs_readable") for p in fs_readable]
    writable = [p for p in DEVICES if os.path.exists(p)]
    writable += [check_grantable(os.path.abspath(p), "fs_writable") for p in fs_writable]
    base_env = {"PATH": TOOL_PATH, "LANG": "C.UTF-8"}
    if tmpdir:
        writable.append(tmpdir)
        base_env.update(TMPDIR=tmpdir, HOME=tmpdir)
    base_env.update(env or {})
    return Sandbox(fs_readable=list(dict.fromkeys(readable)), fs_writable=list(dict.fromkeys(writable)),
                   fs_denied=[p for p in DENIED if os.path.exists(p)], net_allow=list(net_allow),
                   clean_env=True, env=base_env, cwd=cwd or tmpdir, max_memory=max_memory,
                   max_processes=max_processes, no_coredump=True)


def wrap(cmd: Sequence[str], **policy: Any) -> int:
    """Run the MCP server `cmd` in a sandbox (wrap_policy(**policy)) on this
    process's stdin/stdout/stderr, and return its exit status. SIGTERM,
    SIGINT and SIGHUP kill the sandbox."""
    import shutil
    import tempfile
    tmpdir = tempfile.mkdtemp(prefix="sandlock-mcp-wrap-")
    try:
        sb = wrap_policy(tmpdir=tmpdir, **policy)
        proc = sb.popen(list(cmd))
        previous = {}

        def stop(_sig: int, _frame: Any) -> None:
            proc.kill()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[sig] = signal.signal(sig, stop)
        try:
            proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if proc.result is not None and proc.result.error and proc.result.exit_code in (127, -1):
            print(f"sandlock-mcp: {proc.result.error}", file=sys.stderr)
        return proc.returncode if proc.returncode is not None else 125
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def wrapped_server_parameters(cmd: Sequence[str], *, fs_readable: Sequence[str] = (),
                              fs_writable: Sequence[str] = (), net_allow: Sequence[str] = (),
                              env: dict[str, str] | None = None, cwd: str | None = None) -> Any:
    """`StdioServerParameters` for the SDK's stdio_client that start the MCP
    server `cmd` inside a sandbox (`python -m sandlock.mcp wrap ... -- cmd`).
    `env` goes to the sandboxed server through the environment of the
    wrapper (never on a command line)."""
    from mcp.client.stdio import StdioServerParameters
    args = ["-m", "sandlock.mcp", "wrap"]
    for p in fs_readable:
        args += ["-r", p]
    for p in fs_writable:
        args += ["-w", p]
    for rule in net_allow:
        args += ["--net-allow", rule]
    if cwd:
        args += ["--cwd", cwd]
    wrapper_env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ}
    for k, v in (env or {}).items():
        args += ["--pass-env", k]
        wrapper_env[k] = v
    return StdioServerParameters(command=sys.executable, args=[*args, "--", *cmd], env=wrapper_env)


# -- command line ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sandlock-mcp", allow_abbrev=False,
                                description="An MCP server whose tools run in sandboxes (docs/mcp.md).")
    p.add_argument("--version", action="version", version=f"sandlock-mcp {__version__}")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", allow_abbrev=False, help="serve the built-in tools (the default)")
    _serve_flags(s)
    w = sub.add_parser("wrap", allow_abbrev=False, help="run a stdio MCP server inside a sandbox")
    w.add_argument("-r", "--fs-read", action="append", default=[], metavar="PATH")
    w.add_argument("-w", "--fs-write", action="append", default=[], metavar="PATH")
    w.add_argument("--net-allow", action="append", default=[], metavar="RULE")
    w.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    w.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="pass this variable of sandlock-mcp's own environment")
    w.add_argument("--cwd", default=None)
    w.add_argument("-m", "--max-memory", default="2G")
    w.add_argument("cmd", nargs=argparse.REMAINDER)
    return p


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default=None, help="directory of the tools (default: a private temporary one)")
    p.add_argument("--transport", choices=["stdio", "http", "streamable-http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token-file", default=None, help=f"file holding the bearer token (or ${TOKEN_ENV})")
    p.add_argument("--allow-remote-bind", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="a directory tool capabilities may grant besides the workspace")
    p.add_argument("--allow-network", action="store_true", help="let tools declare network capabilities")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per call")
    p.add_argument("--max-output", type=int, default=DEFAULT_MAX_OUTPUT, help="bytes of output per call")
    p.add_argument("--tools", default=",".join(BUILTIN_TOOLS), help="built-in tools to serve")


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f"--token-file {args.token_file}: empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    token = secrets.token_urlsafe(32)
    print(f"sandlock-mcp: bearer token (Authorization: Bearer ...): {token}", file=sys.stderr, flush=True)
    return token


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("serve", "wrap", "-h", "--help", "--version"):
        argv.insert(0, "serve")
    args = _parser().parse_args(argv)
    try:
        if args.command == "wrap":
            return _wrap_command(args)
        return _serve_command(args)
    except (ValueError, OSError, SandlockError) as e:
        print(f"sandlock-mcp: {e}", file=sys.stderr)
        return 125
    except KeyboardInterrupt:
        return 130


def _wrap_command(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ValueError("wrap: no command (sandlock-mcp wrap [flags] -- CMD [ARGS...])")
    env = {}
    for item in args.env:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"-e/--env: expected K=V, got {item!r}")
        env[k] = v
    for name in args.pass_env:
        if name not in os.environ:
            raise ValueError(f"--pass-env {name}: not set")
        env[name] = os.environ[name]
    return wrap(cmd, fs_readable=args.fs_read, fs_writable=args.fs_write, net_allow=args.net_allow,
                env=env, cwd=args.cwd, max_memory=args.max_memory)


def _serve_command(args: argparse.Namespace) -> int:
    import anyio
    tools = [t for t in args.tools.split(",") if t]
    box = McpSandbox(args.workspace, timeout=args.timeout, max_output=args.max_output,
                     allowed_paths=args.allow_path, allow_network=args.allow_network, builtins=tools)
    try:
        if args.transport == "stdio":
            anyio.run(serve_stdio, box)
        else:
            if not is_loopback(args.host) and not args.allow_remote_bind:
                raise ValueError(f"refusing to bind {args.host}: not a loopback address "
                                 "(--allow-remote-bind serves the network, still with the bearer token)")
            token = _token(args)
            print(f"sandlock-mcp: serving http://{args.host}:{args.port}{MCP_PATH} (workspace {box.workspace})",
                  file=sys.stderr, flush=True)
            anyio.run(lambda: serve_http(box, host=args.host, port=args.port, token=token,
                                         allow_remote_bind=args.allow_remote_bind))
    finally:
        box.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
