"""sandlock.mcp end to end, driven by the official MCP SDK's own clients.

Both directions each time: what a tool may do works, what it may not do
(read outside the workspace directly or through a symlink, network,
self-granted capabilities) fails. Skipped when the `mcp` SDK is absent.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

mcp = pytest.importorskip("mcp")

import anyio  # noqa: E402 - after importorskip (an mcp dependency)
from mcp import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

from sandlock.mcp import (BUILTIN_TOOLS, CapabilityError, McpSandbox,  # noqa: E402
                          capabilities_from_mcp_tool, policy_for_tool, validate_capabilities)
from sandlock.mcp.server import wrapped_server_parameters  # noqa: E402

SECRET = "top-secret-4f1c"
CALL_LIMIT = 180  # seconds for one whole client session (generous: CI machines are loaded)


# -- helpers ------------------------------------------------------------------------------

def _child_env(**extra: str) -> dict[str, str]:
    """What a spawned server needs to import sandlock (and mcp) from here."""
    env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "HOME") if k in os.environ}
    env.update(extra)
    return env


def _text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def _is_error(result) -> bool:
    return bool(getattr(result, "is_error", getattr(result, "isError", False)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def listener():
    """A TCP listener on the host's loopback: (port, accepted-connections list)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.settimeout(0.1)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def workspace(world_dir):
    ws = os.path.join(world_dir, "ws")
    os.mkdir(ws)
    os.chmod(ws, 0o777)  # the suite also runs as uid 65534
    outside = os.path.join(world_dir, "outside")
    os.mkdir(outside)
    secret = os.path.join(outside, "secret.txt")
    with open(secret, "w") as f:
        f.write(SECRET)
    os.symlink(secret, os.path.join(ws, "link-secret"))
    os.symlink("/etc/passwd", os.path.join(ws, "link-passwd"))
    os.symlink(outside, os.path.join(ws, "link-dir"))
    with open(os.path.join(ws, "hello.txt"), "w") as f:
        f.write("hello from the workspace")
    return ws, outside, secret


async def _session(params: StdioServerParameters, body):
    with anyio.fail_after(CALL_LIMIT):
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                return await body(session)


# -- stdio, built-in tools -------------------------------------------------------------------

def test_stdio_builtin_tools_work(workspace):
    ws, _outside, _secret = workspace
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "sandlock.mcp", "--workspace", ws], env=_child_env())

    async def body(s: ClientSession):
        names = sorted(t.name for t in (await s.list_tools()).tools)
        out = {"names": names}
        out["write"] = await s.call_tool("write_file", {"path": "sub/new.txt", "content": "written"})
        out["read"] = await s.call_tool("read_file", {"path": "sub/new.txt"})
        out["read0"] = await s.call_tool("read_file", {"path": "hello.txt"})
        out["list"] = await s.call_tool("list_files", {})
        out["shell"] = await s.call_tool("shell", {"command": "echo made > made.txt; cat made.txt"})
        out["python"] = await s.call_tool("python", {"code": "print(open('hello.txt').read().upper())"})
        return out

    out = anyio.run(_session, params, body)
    assert out["names"] == sorted(BUILTIN_TOOLS)
    assert not _is_error(out["write"]) and "Wrote 7 bytes" in _text(out["write"])
    assert _text(out["read"]) == "written"
    assert _text(out["read0"]) == "hello from the workspace"
    assert "dir   sub" in _text(out["list"]) and "file  hello.txt" in _text(out["list"])
    assert not _is_error(out["shell"]) and "made" in _text(out["shell"])
    assert "[exit code: 0]" in _text(out["shell"])
    assert "HELLO FROM THE WORKSPACE" in _text(out["python"])
    with open(os.path.join(ws, "sub", "new.txt")) as f:
        assert f.read() == "written"
    assert os.path.exists(os.path.join(ws, "made.txt"))


def test_stdio_builtin_tools_are_confined(workspace, listener):
    ws, outside, secret = workspace
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "sandlock.mcp", "--workspace", ws, "--timeout", "3"],
        env=_child_env(SANDLOCK_TEST_SECRET=SECRET))
    probe = f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=3); print('CONNECTED')"

    async def body(s: ClientSession):
        calls = {
            "dotdot": ("read_file", {"path": "../outside/secret.txt"}),
            "abs": ("read_file", {"path": secret}),
            "link": ("read_file", {"path": "link-secret"}),
            "passwd": ("read_file", {"path": "link-passwd"}),
            "linkdir": ("read_file", {"path": "link-dir/secret.txt"}),
            "write_linkdir": ("write_file", {"path": "link-dir/planted.txt", "content": "x"}),
            "list_linkdir": ("list_files", {"subdir": "link-dir"}),
            "shell_cat": ("shell", {"command": f"cat {secret}"}),
            "shell_link": ("shell", {"command": "cat link-secret"}),
            "shell_env": ("shell", {"command": "env"}),
            "net_shell": ("shell", {"command": f"python3 -c \"{probe}\" || {sys.executable} -c \"{probe}\""}),
            "net_python": ("python", {"code": probe}),
            "python_write": ("python", {"code": "open('py.txt', 'w').write('x')"}),
            "timeout": ("shell", {"command": "sleep 30"}),
        }
        out = {}
        for key, (tool, args) in calls.items():
            t0 = time.monotonic()
            out[key] = (await s.call_tool(tool, args), time.monotonic() - t0)
        return out

    out = anyio.run(_session, params, body)
    for key in ("dotdot", "abs", "link", "passwd", "linkdir", "write_linkdir", "list_linkdir"):
        res, _ = out[key]
        assert _is_error(res), (key, _text(res))
        assert SECRET not in _text(res) and "root:" not in _text(res), key
    # the symlinks are stopped by the sandbox (EACCES), not by a path check of the tool
    assert "Permission denied" in _text(out["link"][0])
    assert "Permission denied" in _text(out["passwd"][0])
    assert not os.path.exists(os.path.join(outside, "planted.txt"))
    for key in ("shell_cat", "shell_link"):
        res, _ = out[key]
        assert _is_error(res) and SECRET not in _text(res), key
    assert SECRET not in _text(out["shell_env"][0])  # the environment is cleared
    for key in ("net_shell", "net_python"):
        res, _ = out[key]
        assert _is_error(res) and "CONNECTED" not in _text(res), (key, _text(res))
    assert _is_error(out["python_write"][0]) and not os.path.exists(os.path.join(ws, "py.txt"))
    res, took = out["timeout"]
    assert _is_error(res) and "timed out" in _text(res) and took < 20


def test_stdio_control_outside_file_is_readable_unconfined(workspace):
    """The control of the tests above: the test process itself can read the
    secret and follow the symlinks (so their failure is the sandbox's)."""
    ws, _outside, secret = workspace
    with open(os.path.join(ws, "link-secret")) as f:
        assert f.read() == SECRET
    with open(secret) as f:
        assert f.read() == SECRET


# -- streamable HTTP -------------------------------------------------------------------------

def _start_http(ws: str, port: int, token: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandlock.mcp", "--workspace", ws, "--transport", "http",
         "--port", str(port)], env=_child_env(SANDLOCK_MCP_TOKEN=token),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the HTTP server did not start")


def _http_client(url: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:  # mcp 2.x
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client
        return streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
    except ImportError:  # mcp 1.x
        from mcp.client.streamable_http import streamablehttp_client
        return streamablehttp_client(url, headers=headers)


def _post(url: str, headers: dict[str, str]) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def http_server(workspace):
    ws = workspace[0]
    port = _free_port()
    token = "test-token-" + os.urandom(8).hex()
    proc = _start_http(ws, port, token)
    yield f"http://127.0.0.1:{port}/mcp", token, ws
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_http_with_token(http_server):
    url, token, ws = http_server

    async def main():
        with anyio.fail_after(CALL_LIMIT):
            async with _http_client(url, token) as streams:
                async with ClientSession(streams[0], streams[1]) as s:
                    await s.initialize()
                    names = sorted(t.name for t in (await s.list_tools()).tools)
                    ok = await s.call_tool("shell", {"command": "echo over-http > h.txt; cat h.txt"})
                    bad = await s.call_tool("read_file", {"path": "link-secret"})
                    return names, ok, bad

    names, ok, bad = anyio.run(main)
    assert names == sorted(BUILTIN_TOOLS)
    assert not _is_error(ok) and "over-http" in _text(ok)
    assert _is_error(bad) and SECRET not in _text(bad)
    assert os.path.exists(os.path.join(ws, "h.txt"))


def test_http_without_token_is_refused(http_server):
    url, token, _ws = http_server
    assert _post(url, {}) == 401
    assert _post(url, {"Authorization": "Bearer wrong"}) == 401
    assert _post(url, {"Authorization": f"Basic {token}"}) == 401
    assert _post(url, {"Authorization": f"Bearer {token}x"}) == 401
    # the right token passes the gate (whatever the MCP layer answers a bare ping)
    assert _post(url, {"Authorization": f"Bearer {token}"}) != 401
    # DNS rebinding: a foreign Host is refused even with the token
    assert _post(url, {"Authorization": f"Bearer {token}", "Host": "evil.example:80"}) >= 400

    async def main():
        with anyio.fail_after(30):
            async with _http_client(url, None) as streams:
                async with ClientSession(streams[0], streams[1]) as s:
                    await s.initialize()

    with pytest.raises(BaseException) as info:  # noqa: B017 - the SDK raises a group or an HTTP error
        anyio.run(main)
    assert not isinstance(info.value, TimeoutError)


def test_http_refuses_non_loopback_bind(world_dir):
    r = subprocess.run([sys.executable, "-m", "sandlock.mcp", "--workspace", world_dir, "--transport", "http",
                        "--host", "0.0.0.0", "--port", str(_free_port())],
                       env=_child_env(SANDLOCK_MCP_TOKEN="x"), capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 125
    assert b"refusing to bind 0.0.0.0" in r.stderr


def test_http_generates_a_token_when_none_is_given(world_dir):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandlock.mcp", "--workspace", world_dir, "--transport",
                             "http", "--port", str(port)], env=_child_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert "bearer token" in line
        token = line.rsplit(":", 1)[1].strip()
        assert len(token) >= 32
    finally:
        proc.kill()
        proc.wait()


# -- capabilities -----------------------------------------------------------------------------

@pytest.mark.parametrize("caps, words", [
    ({"no_supervisor": True}, "supervisor"),
    ({"fs_readable": ["/"]}, "is /"),
    ({"fs_writable": ["/"]}, "is /"),
    ({"fs_readable": ["/etc"]}, "outside the workspace"),
    ({"fs_readable": [os.path.expanduser("~")]}, "home"),
    ({"fs_readable": ["link-dir"]}, "outside the workspace"),  # a symlink out of the workspace
    ({"net_allow": "*"}, "list"),
    ({"net_allow": ["*"]}, "does not allow network"),
    ({"chroot": "/tmp"}, "filesystem view"),
    ({"disable": ["fs"]}, "Landlock"),
    ({"clean_env": False}, "environment"),
    ({"max_memory": True}, "number"),
    ({"frobnicate": 1}, "unknown"),
    ({"policy_fn": None}, "not a capability"),
])
def test_capability_validation_refuses(workspace, caps, words):
    ws = workspace[0]
    with pytest.raises(CapabilityError, match=words):
        validate_capabilities(caps, workspace=ws)
    with pytest.raises(CapabilityError):
        policy_for_tool(workspace=ws, capabilities=caps)


def test_capability_validation_allows(workspace):
    ws, outside, _secret = workspace
    sb = policy_for_tool(workspace=ws, capabilities={"fs_writable": ["."], "max_memory": "128M",
                                                     "env": {"MODE": "test"}})
    assert ws in sb.fs_writable and not sb.no_supervisor and sb.clean_env
    assert list(sb.net_allow) == [] and list(sb.net_allow_bind) == []
    assert sb.env["MODE"] == "test" and sb.max_memory == "128M"
    # a directory the server allows may be granted, and network when the server allows it
    sb = policy_for_tool(workspace=ws, capabilities={"fs_readable": [outside], "net_allow": ["example.com:443"]},
                         allowed_paths=[outside], allow_network=True)
    assert outside in sb.fs_readable and list(sb.net_allow) == ["example.com:443"]
    with pytest.raises(CapabilityError):
        policy_for_tool(workspace="/", capabilities={})


def test_capabilities_from_an_mcp_tool_are_extracted_not_trusted(workspace):
    wire = {"name": "evil", "inputSchema": {"type": "object"},
            "annotations": {"sandlock:fs_writable": ["/"], "sandlock:no_supervisor": True},
            "_meta": {"sandlock:net_allow": ["*"]}}
    caps = capabilities_from_mcp_tool(wire)
    assert caps == {"fs_writable": ["/"], "no_supervisor": True, "net_allow": ["*"]}
    assert capabilities_from_mcp_tool(mcp.types.Tool.model_validate(wire))["net_allow"] == ["*"]
    for key, value in caps.items():  # every one of them is refused
        with pytest.raises(CapabilityError):
            validate_capabilities({key: value}, workspace=workspace[0])


# -- the Python API: McpSandbox with a function tool ----------------------------------------

def test_function_tool_runs_sandboxed_with_injected_workspace(workspace, world_dir):
    ws, _outside, secret = workspace
    moddir = os.path.join(world_dir, "mods")
    os.mkdir(moddir)
    name = "sl_mcp_tools_" + os.urandom(4).hex()
    with open(os.path.join(moddir, name + ".py"), "w") as f:
        f.write(textwrap.dedent('''
            import os

            def where(workspace, note: str = ""):
                return {"workspace": workspace, "cwd": os.getcwd(), "note": note,
                        "env": sorted(os.environ)}

            def peek(path: str):
                try:
                    with open(path) as f:
                        return f.read()
                except OSError as e:
                    return "DENIED " + e.strerror

            if __name__ == "__main__":
                raise SystemExit("not imported as a module")
        '''))
    os.chmod(moddir, 0o755)
    sys.path.insert(0, moddir)
    try:
        module = __import__(name)
        box = McpSandbox(ws, builtins=False)
        box.add_tool("where", module.where, description="where am I")
        box.add_tool("peek", module.peek)
        assert [t["name"] for t in box.tool_definitions()] == ["where", "peek"]
        assert "workspace" not in box.tools["where"].input_schema["properties"]
        text, err = box.run_tool("where", {"note": "hi", "workspace": "/etc"})
        assert not err, text
        got = json.loads(text)
        assert got["workspace"] == os.path.realpath(ws) and got["note"] == "hi"
        assert "SANDLOCK_TEST_SECRET" not in got["env"]
        text, err = box.run_tool("peek", {"path": secret})
        assert text.startswith("DENIED") and SECRET not in text
        assert anyio.run(box.call_tool, "peek", {"path": os.path.join(ws, "hello.txt")}) == \
            "hello from the workspace"
        with pytest.raises(ValueError, match="cannot sandbox"):
            box.add_tool("lam", lambda: 1)

        def nested():
            return 1
        with pytest.raises(ValueError, match="cannot sandbox"):
            box.add_tool("nested", nested)
        with pytest.raises(CapabilityError):
            box.add_tool("bad", module.peek, capabilities={"no_supervisor": True})
        assert box.run_tool("nope", {}) == ("Unknown tool: nope", True)
    finally:
        sys.path.remove(moddir)


def test_output_is_capped(workspace):
    box = McpSandbox(workspace[0], max_output=1000)
    text, err = box.run_tool("shell", {"command": "yes"})
    assert err and "truncated at 1000 bytes" in text and len(text) < 3000


def test_import_sandlock_does_not_import_mcp():
    r = subprocess.run([sys.executable, "-c", "import sys, sandlock; sandlock.Sandbox; "
                        "print('mcp' in sys.modules)"], capture_output=True, env=_child_env(), timeout=60)
    assert r.stdout.strip() == b"False", r.stderr


def test_import_without_sdk_names_the_extra(world_dir):
    blocker = os.path.join(world_dir, "block")
    os.mkdir(blocker)
    with open(os.path.join(blocker, "sitecustomize.py"), "w") as f:
        f.write("import sys\nclass B:\n    def find_spec(self, name, path=None, target=None):\n"
                "        if name == 'mcp' or name.startswith('mcp.'):\n"
                "            raise ImportError('blocked')\n"
                "sys.meta_path.insert(0, B())\n")
    env = _child_env()
    env["PYTHONPATH"] = os.pathsep.join([blocker] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-c", "import sandlock.mcp"], capture_output=True, env=env, timeout=60)
    assert r.returncode != 0
    assert b"pip install 'sandlock[mcp]'" in r.stderr


# -- wrap: a third-party MCP server as a whole in a sandbox ---------------------------------

_THIRD_PARTY = '''
import os, socket, sys
try:
    from mcp.server.mcpserver import MCPServer as Server
except ImportError:
    from mcp.server.fastmcp import FastMCP as Server

app = Server("third-party")

@app.tool()
def peek(path: str) -> str:
    try:
        with open(path) as f:
            return "READ " + f.read()
    except OSError as e:
        return "DENIED " + str(e.strerror)

@app.tool()
def connect(port: int) -> str:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        return "CONNECTED"
    except OSError as e:
        return "REFUSED " + str(e.strerror)

@app.tool()
def environment() -> str:
    return " ".join(sorted(os.environ))

if __name__ == "__main__":
    app.run()
'''


def test_wrap_runs_a_third_party_server_inside_a_sandbox(workspace, world_dir, listener):
    _ws, _outside, secret = workspace
    srvdir = os.path.join(world_dir, "srv")
    os.mkdir(srvdir)
    script = os.path.join(srvdir, "server.py")
    with open(script, "w") as f:
        f.write(_THIRD_PARTY)
    os.chmod(srvdir, 0o755)
    sdk_root = os.path.dirname(os.path.dirname(os.path.abspath(mcp.__file__)))
    readable = [srvdir, sdk_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    params = wrapped_server_parameters([sys.executable, script], fs_readable=readable,
                                       env={"PYTHONPATH": os.pathsep.join([sdk_root, *readable])})
    params.env = {**(params.env or {}), "SANDLOCK_TEST_SECRET": SECRET}

    async def body(s: ClientSession):
        own = await s.call_tool("peek", {"path": script})
        stolen = await s.call_tool("peek", {"path": secret})
        net = await s.call_tool("connect", {"port": listener})
        env = await s.call_tool("environment", {})
        return own, stolen, net, env

    own, stolen, net, env = anyio.run(_session, params, body)
    assert _text(own).startswith("READ ")
    assert _text(stolen).startswith("DENIED") and SECRET not in _text(stolen)
    assert _text(net).startswith("REFUSED"), _text(net)
    assert "SANDLOCK_TEST_SECRET" not in _text(env)
