"""stepedit as an MCP server (`stepedit mcp`): tools for agents to edit images, on a model in
this process or on a running stepedit server. See docs/mcp.md."""

from stepedit.mcp.server import build_server, serve

__all__ = ["build_server", "serve"]
