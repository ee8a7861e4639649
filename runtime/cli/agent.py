"""``dx run MODEL --mcp mcp.json``: the terminal agent — the model may call MCP tools, the person decides.

Before each call DX shows the server, the tool and the arguments and asks
``[y]es / [n]o / [a]lways for this tool`` on the terminal; the operator's policy still applies
(``allow`` runs without asking, ``deny`` is refused without asking). With no terminal to ask
(stdin not a tty) an ``ask`` call is refused. A refused call is reported to the model as refused;
a result is shown capped; the loop is bounded (``--tool-rounds``, ``--tool-timeout``). Every call,
run or not, goes to the audit log as under ``dx serve --mcp``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any

from dx.mcp import audit, policy
from dx.mcp.toolbox import Bound, Toolbox

SHOWN_RESULT = 600  # characters of a result printed on the terminal
Asker = Callable[[str], str]


def tty_asker(stdin: IO[str], err: IO[str]) -> Asker | None:
    """Ask on the terminal; None when stdin is not one (then an ``ask`` call is refused)."""
    if not stdin.isatty():
        return None

    def ask(question: str) -> str:
        err.write(question)
        err.flush()
        line = stdin.readline()
        return line.strip().lower()[:1] if line else "n"

    return ask


class Consent:
    """The person's answers so far (``always`` per tool) on top of the operator's policy."""

    def __init__(self, asker: Asker | None, err: IO[str]) -> None:
        self.asker = asker
        self.err = err
        self.always: set[str] = set()

    def decide(self, bound: Bound, arguments: str) -> str:
        """allow / deny for one call: the policy first, then the person."""
        shown = arguments if len(arguments) <= 400 else arguments[:400] + "…"
        self.err.write(f"dx: {bound.tool.server} · {bound.tool.name} {shown}\n")
        if bound.decision == policy.DENY:
            self.err.write("dx: denied by the policy\n")
            return policy.DENY
        if bound.decision == policy.ALLOW or bound.exposed in self.always:
            return policy.ALLOW
        if self.asker is None:
            self.err.write("dx: refused: no terminal to ask (allow it in the policy or with --allow-tools)\n")
            return "refused"
        while True:
            got = self.asker("run it? [y]es / [n]o / [a]lways for this tool: ")
            if got in ("y", "n", "a"):
                break
        if got == "a":
            self.always.add(bound.exposed)
        return policy.ALLOW if got in ("y", "a") else "refused"


def tool_round(box: Toolbox, consent: Consent, calls: list[dict[str, Any]], *, model: str,
               err: IO[str]) -> list[dict[str, Any]]:
    """Settle every call of one model turn: the tool messages that answer them."""
    out = []
    for call in calls:
        fn = call.get("function") or {}
        name = fn.get("name")
        args = fn.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args or {}, ensure_ascii=False)
        bound = box.tools.get(name) if isinstance(name, str) else None
        if bound is None:
            text = f"error: there is no tool {name!r}"
        else:
            decision = consent.decide(bound, args)
            if decision == policy.ALLOW:
                outcome = box.run(bound, args, key="terminal", model=model)
                text = outcome.text
                shown = text if len(text) <= SHOWN_RESULT else text[:SHOWN_RESULT] + f"… ({len(text)} characters)"
                err.write(f"dx: {outcome.decision}: {shown}\n")
            elif decision == policy.DENY:
                box.note(bound, args, audit.DENIED, key="terminal", model=model)
                text = f"error: refused: the operator's policy does not allow {bound.key}"
            else:
                box.note(bound, args, audit.REFUSED, key="terminal", model=model)
                text = f"error: refused: the user did not allow this call of {bound.key}"
        err.flush()
        out.append({"role": "tool", "tool_call_id": call.get("id") or "", "content": text})
    return out


def converse(complete: Callable[[dict[str, Any]], dict[str, Any]], box: Toolbox, consent: Consent,
             messages: list[dict[str, Any]], base: dict[str, Any], *, rounds: int, first_choice: str | None,
             model: str, err: IO[str] = sys.stderr) -> str:
    """One user turn: ask, run the calls the person allows, ask again... until the model answers."""
    tools = box.openai_tools()
    for round_no in range(rounds + 1):
        body = {**base, "messages": messages}
        if tools:
            body["tools"] = tools
            if round_no == rounds:
                body["tool_choice"] = "none"
            elif round_no == 0 and first_choice:
                body["tool_choice"] = first_choice
        answer = complete(body)
        message = ((answer.get("choices") or [{}])[0]).get("message") or {}
        calls = message.get("tool_calls") or []
        if not calls or round_no == rounds:
            text = message.get("content") or ""
            messages.append({"role": "assistant", "content": text})
            return text
        messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
        messages.extend(tool_round(box, consent, calls, model=model, err=err))
    return ""
