"""Who decides whether a tool call runs: the operator's policy, read from the config and the flags.

``decide`` is pure: the most specific rule wins — ``server.tool``, then ``server.*``, then
``readOnly`` (tools annotated ``readOnlyHint``), then ``default`` (ask unless set). What each answer
means depends on who is asking: under ``dx serve`` allow = DX runs it, ask = the call goes back to
the API client as an ordinary tool call (the client's consent decides), deny = DX refuses it;
under ``dx run`` ask = the terminal asks the person.
"""

from __future__ import annotations

from dx.mcp.config import PolicyConfig

ALLOW, ASK, DENY = "allow", "ask", "deny"


def decide(policy: PolicyConfig, server: str, tool: str, *, read_only: bool) -> str:
    """allow / ask / deny for one MCP tool."""
    exact = policy.tools.get(f"{server}.{tool}")
    if exact is not None:
        return exact
    wildcard = policy.tools.get(f"{server}.*")
    if wildcard is not None:
        return wildcard
    if read_only and policy.read_only is not None:
        return policy.read_only
    return policy.default
