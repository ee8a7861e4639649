"""``dx run MODEL [PROMPT]``: one answer, or an interactive chat, streamed as it comes.

Two ways to reach a model, one interface (:class:`ChatBackend`):

* :class:`LocalEngine` — no server needed: the model is resolved and verified
  through the store, the supervisor starts ``llama-server`` for it, and we talk
  to the engine's OpenAI endpoint directly (SSE), stopping it when done;
* :class:`RemoteServer` — with ``--host``/``DX_HOST``: a running ``dx serve``
  over its Ollama ``/api/chat`` (NDJSON), with the API key from ``DX_API_KEY``
  or ``$DX_HOME/api_key``.

Only the standard library speaks HTTP here: ``dx run`` starts in a minted
executable, where every import costs start-up time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from dx import config
from dxverify.errors import ConfigurationError, DXError, ToolError

DEFAULT_PORT = 11434
BYE = {"/bye", "/exit", "/quit"}


class ServerError(DXError):
    """The engine or dx server answered with an error."""

    exit_code = 8


@dataclass
class Sampling:
    """The few options ``dx run`` exposes; None leaves the engine's default."""

    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None

    def openai(self) -> dict[str, Any]:
        return self._fields(1)

    def ollama(self) -> dict[str, Any]:
        return self._fields(2)

    def _fields(self, api: int) -> dict[str, Any]:
        """The options that are set, under the ``api``'s name for each (a column of ``_SAMPLING_NAMES``)."""
        return {row[api]: getattr(self, row[0]) for row in _SAMPLING_NAMES if getattr(self, row[0]) is not None}


# Sampling field, its OpenAI request name, its Ollama option name.
_SAMPLING_NAMES = (
    ("temperature", "temperature", "temperature"),
    ("max_tokens", "max_tokens", "num_predict"),
    ("seed", "seed", "seed"),
)


@dataclass(frozen=True)
class SpecOptions:
    """``dx run``'s speculation options, as given (dx.engine.speculative resolves and checks them)."""

    mode: str | None = None
    draft: str | None = None
    n_max: int | None = None
    n_min: int | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.mode, self.draft, self.n_max, self.n_min))


@dataclass(frozen=True)
class AgentOptions:
    """``dx run --mcp``: the MCP servers' file, the calls allowed without asking, the loop's bounds."""

    config: str
    allow_tools: tuple[str, ...] = ()
    rounds: int = 4
    timeout: float = 30.0
    tool_choice: str | None = None  # the first round's (e.g. "required"); later rounds are "auto"


class ChatBackend(Protocol):
    name: str

    def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[str]: ...

    def close(self) -> None: ...


def normalize_host(host: str) -> str:
    """Ollama-style host: ``host``, ``host:port`` or a URL; the port defaults to 11434."""
    h = host.strip().rstrip("/")
    if not h:
        raise ConfigurationError("empty --host / DX_HOST")
    if "://" not in h:
        h = "http://" + h
    scheme, _, rest = h.partition("://")
    if scheme not in ("http", "https"):
        raise ConfigurationError(f"--host {host!r}: only http:// and https:// are supported")
    hostport = rest.split("/", 1)[0]
    if not hostport.rsplit("]", 1)[-1].count(":"):
        h = f"{scheme}://{hostport}:{DEFAULT_PORT}" + rest[len(hostport):]
    return h


def _post_lines(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> Iterator[bytes]:
    """POST JSON and yield the response's lines as they arrive; HTTP errors become one line."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise ServerError(f"{url} answered HTTP {e.code}: {_error_text(e.read())}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(f"cannot reach {url}: {reason}", hint="is the server running? (`dx serve`)") from None
    with resp:
        while True:
            try:
                line = resp.readline()
            except OSError as e:
                raise ServerError(f"{url}: connection lost mid-answer: {e}") from None
            if not line:
                return
            yield line


def _error_text(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:300] or "no details"
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err or doc)[:300]


@dataclass
class LocalEngine:
    """Start llama-server for one model, talk to it directly, stop it on close."""

    model: str | None
    ctx: int | None = None
    speculation: SpecOptions = field(default_factory=SpecOptions)
    name: str = ""
    engine: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from dx.engine.process import GENERATE, Engine
        from dx.engine.speculative import engine_args_for, prepare
        from dx.models.embedded import resolve

        # The model inside a minted executable (no MODEL, or one of its names); else the store
        # (pulls hf: on demand). Either way it is verified before the engine sees it, and so is a draft.
        source = resolve(self.model)
        self.name = source.display_name
        s = self.speculation
        spec = prepare(source, s.mode, s.draft, s.n_max, s.n_min)
        spec_args = list(engine_args_for(source, spec)(source, GENERATE))  # --draft, the model's DRAFT, n-grams

        def start(args: Sequence[str]) -> Any:
            return Engine.start(source, ctx=self.ctx, parallel=1, extra_args=list(args))

        if not (spec.auto and spec_args):
            self.engine = start(spec_args)
            return
        # --spec auto (the default with a draft): the serving engine is the one that measured faster
        from dx.engine.locate import locate_engine
        from dx.engine.spec_auto import AutoSpec, remembered

        key = f"{source.key[0]}@{source.key[1]} {' '.join(spec_args)} {locate_engine()}"
        self.engine, decision, known = remembered(AutoSpec(), config.dx_home() / "spec-auto.json", key, start,
                                                  spec_args)
        when = "measured before" if known else "measured now"
        print(f"dx: --spec auto: speculation {'on' if decision.speculate else 'off'}, {decision.reason} "
              f"({when}; --spec on/off forces it)", file=sys.stderr, flush=True)

    def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[str]:
        from dx.models.defaults import for_source

        # a created model's MESSAGEs go first, as the server puts them (its SYSTEM is already the chat's)
        shots = [dict(m) for m in for_source(self.engine.source).messages]
        at = 1 if messages and messages[0].get("role") == "system" else 0
        messages = [*messages[:at], *shots, *messages[at:]]
        body = {"model": self.name, "messages": messages, "stream": True, **sampling.openai()}
        headers = {"Authorization": f"Bearer {self.engine.api_key}"}
        from dx.server.ollama_wire import sse_events

        lines = _post_lines(f"{self.engine.url}/v1/chat/completions", body, headers, timeout=600)
        for chunk in sse_events(lines):
            if "error" in chunk:
                raise ServerError(f"engine: {_error_text(json.dumps(chunk).encode())}")
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion with ``tools``, not streamed: the engine's own tool-call parsing when the
        template has it, else DX's generic format (``dx.server.tool_calls``), read back as OpenAI's shape."""
        from dx.engine.props import renders_tools
        from dx.engine.relay import engine_json
        from dx.server import tool_calls

        body = {"model": self.name, **body, "stream": False}
        tools = tool_calls.check_tools(body.get("tools"))
        choice = tool_calls.check_tool_choice(body.get("tool_choice"), tools)
        if not tools or renders_tools(self.engine):
            payload = (tool_calls.native_body(body, tools, choice) if tools else None) or body
            status, answer = engine_json(self.engine, "/v1/chat/completions", payload)
        else:
            status, answer = engine_json(self.engine, "/v1/chat/completions", tool_calls.rewrite(body, tools, choice))
            if status == 400 and choice.mode != tool_calls.NONE:
                status, answer = engine_json(self.engine, "/v1/chat/completions",
                                             tool_calls.rewrite(body, tools, choice, free_arguments=True))
            if status == 200:
                answer = tool_calls.openai_answer(answer, tool_calls.read_answer(answer, choice))
        if status != 200:
            raise ServerError(f"engine: {_error_text(json.dumps(answer).encode())}")
        return answer

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None


@dataclass
class RemoteServer:
    """A running ``dx serve`` (or Ollama) reached over its /api/chat."""

    host: str
    model: str
    api_key: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.host = normalize_host(self.host)
        self.name = self.model
        if self.api_key is None:
            self.api_key = config.api_key_env() or _key_from_home()

    def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[str]:
        body = {"model": self.model, "messages": messages, "stream": True}
        if sampling.ollama():
            body["options"] = sampling.ollama()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        for raw in _post_lines(f"{self.host}/api/chat", body, headers, timeout=600):
            try:
                chunk = json.loads(raw)
            except ValueError:
                continue
            if isinstance(chunk, dict) and chunk.get("error"):
                raise ServerError(f"{self.host}: {chunk['error']}")
            piece = (chunk.get("message") or {}).get("content")
            if piece:
                yield piece
            if chunk.get("done"):
                return

    def close(self) -> None:
        pass


def _key_from_home() -> str | None:
    from dx.config import dx_home

    try:
        return (dx_home() / "api_key").read_text().strip() or None
    except OSError:
        return None


def answer(backend: ChatBackend, messages: list[dict[str, str]], sampling: Sampling, out: IO[str]) -> str:
    """Stream one reply to ``out`` as it comes; return it whole (for the chat history)."""
    parts = []
    for piece in backend.stream(messages, sampling):
        parts.append(piece)
        out.write(piece)
        out.flush()
    text = "".join(parts)
    if not text.endswith("\n"):
        out.write("\n")
        out.flush()
    return text


def one_shot(backend: ChatBackend, prompt: str, system: str | None, sampling: Sampling, out: IO[str]) -> None:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if not answer(backend, messages, sampling, out).strip():
        raise ToolError(f"{backend.name} returned an empty answer", hint="see the engine log in $DX_HOME/logs")


def interactive(backend: ChatBackend, system: str | None, sampling: Sampling) -> None:
    """A chat on the terminal: history kept, Ctrl-C stops an answer, /bye or Ctrl-D ends."""
    import contextlib

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    print(f"{backend.name} — /bye to leave, /clear to forget the conversation", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in BYE:
            return
        if text == "/clear":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": line})
        try:
            reply = answer(backend, history, sampling, sys.stdout)
        except KeyboardInterrupt:
            print("\n(stopped)", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})


def run(
    model: str | None,
    prompt: str | None,
    *,
    host: str | None,
    system: str | None,
    sampling: Sampling,
    ctx: int | None,
    stdin: IO[str],
    stdout: IO[str],
    speculation: SpecOptions | None = None,
    agent: AgentOptions | None = None,
) -> None:
    """What ``dx run`` does; piped stdin is the prompt (after PROMPT, if both are given).

    ``model`` None: the model inside this executable (or, with ``host``, the server's default).
    """
    piped = None if stdin.isatty() else stdin.read()
    if piped is not None and piped.strip():
        prompt = f"{prompt}\n\n{piped}" if prompt else piped
    if prompt is not None and not prompt.strip():
        raise ConfigurationError("empty prompt", hint="give a PROMPT argument or pipe text into dx run")
    if prompt is None and piped is not None:
        example = f'run {model} "Why is the sky blue?"' if model else 'run "Why is the sky blue?"'
        raise ConfigurationError("nothing on stdin and no PROMPT",
                                 hint=f"give a PROMPT (try: {example}), or start it on a terminal to chat")
    speculation = speculation or SpecOptions()
    if host and speculation.given:
        raise ConfigurationError("--draft and --spec set up the engine dx run starts; with --host the server's apply",
                                 hint="start the server with them: dx serve MODEL --draft DRAFT")
    if agent is not None:
        if host:
            raise ConfigurationError("--mcp runs the tools here, with the engine dx run starts; not with --host",
                                     hint="leave out --host, or start the server with dx serve MODEL --mcp FILE")
        _agent(model, prompt, system, sampling, ctx, speculation, agent, stdin, stdout)
        return
    backend: ChatBackend = (RemoteServer(host, model or "") if host
                            else LocalEngine(model, ctx=ctx, speculation=speculation))
    if system is None and isinstance(backend, LocalEngine):
        from dx.models.defaults import for_source

        system = for_source(backend.engine.source).system  # the model's own (Ollama's system layer)
    try:
        if prompt is not None:
            one_shot(backend, prompt, system, sampling, stdout)
        else:
            interactive(backend, system, sampling)
    finally:
        backend.close()


def _agent(model: str | None, prompt: str | None, system: str | None, sampling: Sampling, ctx: int | None,
           speculation: SpecOptions, opts: AgentOptions, stdin: IO[str], stdout: IO[str]) -> None:
    """``dx run --mcp``: one answer or a chat, the model calling MCP tools with the person's consent."""
    from dx.cli.agent import Consent, converse, tty_asker
    from dx.mcp import config as mcp_config
    from dx.mcp.toolbox import Toolbox

    cfg = mcp_config.with_allowed(mcp_config.load(opts.config), list(opts.allow_tools))  # bad file: before the engine
    box = Toolbox(cfg, call_timeout=opts.timeout).open()
    backend: LocalEngine | None = None
    try:
        backend = LocalEngine(model, ctx=ctx, speculation=speculation)
        if system is None:
            from dx.models.defaults import for_source

            system = for_source(backend.engine.source).system
        names = ", ".join(f"{b.key}" for b in box.offered()) or "none"
        print(f"dx: {backend.name} with MCP tools: {names}", file=sys.stderr)
        consent = Consent(tty_asker(stdin, sys.stderr), sys.stderr)
        history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        lead = backend

        def turn(text: str) -> str:
            history.append({"role": "user", "content": text})
            reply = converse(lead.complete, box, consent, history, sampling.openai(), rounds=opts.rounds,
                             first_choice=opts.tool_choice, model=lead.name)
            stdout.write(reply + ("" if reply.endswith("\n") else "\n"))
            stdout.flush()
            return reply

        if prompt is not None:
            turn(prompt)
            return
        print(f"{backend.name} — /bye to leave", file=sys.stderr)
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                return
            if line.strip() in BYE:
                return
            if line.strip():
                turn(line)
    finally:
        if backend is not None:
            backend.close()
        box.close()
