"""sandlock.mcp: an MCP server whose tools run in sandboxes.

    pip install 'sandlock[mcp]'

`McpSandbox` holds tools over a workspace directory and runs every call in
a fresh sandbox (deny by default, plus each tool's validated
capabilities); `policy_for_tool` builds such a sandbox; the `sandlock-mcp`
command (sandlock.mcp.server) serves the tools over stdio or streamable
HTTP, and runs third-party MCP servers as a whole inside a sandbox
(`sandlock-mcp wrap`). See docs/mcp.md.
"""
from __future__ import annotations

try:
    import mcp as _sdk  # noqa: F401 - the official MCP SDK, an optional extra
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("sandlock.mcp needs the MCP SDK: pip install 'sandlock[mcp]' "
                      f"(importing mcp failed: {e})") from e

from ._policy import CAPABILITY_KEYS, CapabilityError, policy_for_tool, validate_capabilities
from ._sandbox import BUILTIN_TOOLS, McpSandbox, ToolOutput, capabilities_from_mcp_tool, run_capped

__all__ = ["McpSandbox", "policy_for_tool", "capabilities_from_mcp_tool", "validate_capabilities",
           "CapabilityError", "CAPABILITY_KEYS", "BUILTIN_TOOLS", "ToolOutput", "run_capped"]
