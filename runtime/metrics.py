"""dx's own numbers, and its engines', for Prometheus: ``GET /metrics`` (text exposition format 0.0.4).

Stdlib only and written by hand: this module is compiled into every executable,
where ``prometheus_client`` is not (and would cost more to import than all of
this). The tests parse the output with ``prometheus_client``'s own parser.

What is counted, and where:

* the transport (``dx.server.transport``): every answered request by route and status
  code, its duration, auth failures, requests in progress, requests refused at
  the door (503 before a worker takes them: too many requests or connections);
* time to first token (``dx_time_to_first_token_seconds``): from the moment a
  request's head is complete to the moment the head of a *streamed* (chunked)
  answer on a generation route goes out. llama-server answers a stream only
  once its first token exists (``server-context.cpp`` waits for the task's
  ``first_result`` before it sends any header), and dx sends its own head right
  after the engine's, so that instant is the first token, model loading and
  prompt processing included. Non-streamed answers are in the duration histogram;
* the supervisor (``dx.engine.manager``): engine starts, restarts after a death, unloads;
* the verifier (``dx.models.check``): bytes hashed, and checks answered from the cache;
* the Ollama routes: generated tokens and tokens/s of each answer, from the
  ``timings`` block the engine sends at the end (they parse it anyway). The
  OpenAI routes are relayed byte for byte and parsed for nothing; every API's
  tokens are in the engines' own ``llamacpp:tokens_predicted_total``.

At scrape time each loaded generation engine (started with ``--metrics``) is
asked for its ``/metrics`` and ``/slots`` with a short timeout; its samples are
re-emitted with a ``model`` label, and its slots become ``dx_engine_slots*``
and KV-cache gauges. An engine that does not answer in time is left out and
counted (``dx_engine_scrape_failures_total``), never a 5xx.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from dx import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_TIMEOUT = 1.0  # seconds for each engine request at scrape time
GENERATION_ROUTES = frozenset({"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"})

_lock = threading.Lock()  # one lock for every family: each update is a few dict operations


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def fmt(value: float) -> str:
    """A sample value as the format spells it (``+Inf``, ``NaN``, integers without ``.0``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (),
                 registry: list[_Family] | None = None) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], Any] = {}
        (REGISTRY if registry is None else registry).append(self)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Family):
    kind = "counter"

    def inc(self, *labels: str, by: float = 1.0) -> None:
        with _lock:
            self._values[labels] = self._values.get(labels, 0.0) + by

    def value(self, *labels: str) -> float:
        with _lock:
            return self._values.get(labels, 0.0)

    def lines(self) -> list[str]:
        with _lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {fmt(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        with _lock:
            self._values[labels] = float(value)


_INF_LE = 'le="+Inf"'


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float], labelnames: Sequence[str] = (),
                 registry: list[_Family] | None = None) -> None:
        super().__init__(name, help_text, labelnames, registry)
        self.buckets = tuple(sorted(buckets))

    def observe(self, value: float, *labels: str) -> None:
        with _lock:
            series = self._values.get(labels)
            if series is None:
                series = self._values[labels] = [[0] * len(self.buckets), 0.0, 0]
            counts = series[0]
            for i, bound in enumerate(self.buckets):  # per-bucket counts; cumulated when written
                if value <= bound:
                    counts[i] += 1
                    break
            series[1] += value
            series[2] += 1

    def lines(self) -> list[str]:
        with _lock:
            items = sorted((k, ([*v[0]], v[1], v[2])) for k, v in self._values.items())
        out = []
        for key, (counts, total, n) in items:
            running = 0
            for bound, c in zip(self.buckets, counts, strict=True):
                running += c
                le = f'le="{float(bound)!r}"'  # "1.0", as prometheus_client spells bucket bounds
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            out.append(f"{self.name}_bucket{_labels(self.labelnames, key, _INF_LE)} {n}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {fmt(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {n}")
        return out


REGISTRY: list[_Family] = []

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_RATES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

REQUESTS = Counter("dx_requests_total", "Requests answered, by route and HTTP status", ("route", "code"))
DURATION = Histogram("dx_request_duration_seconds", "Time from a complete request head to the end of the answer",
                     _SECONDS, ("route",))
IN_FLIGHT = Gauge("dx_requests_in_flight", "Requests being answered now (each holds a worker thread)")
AUTH_FAILURES = Counter("dx_auth_failures_total", "Requests refused with 401: no API key, or a wrong one")
REJECTED = Counter("dx_rejected_total", "Requests answered 503 at the door, before any worker took them "
                   "(reason: requests = the cap on requests in progress, connections = on open connections)",
                   ("reason",))
TTFT = Histogram("dx_time_to_first_token_seconds", "Streamed answers on generation routes: from the complete "
                 "request head to the answer's head, which llama-server sends with its first token", _SECONDS,
                 ("route",))
GENERATED = Counter("dx_generated_tokens_total", "Tokens generated for the Ollama API's answers "
                    "(every API's tokens: llamacpp:tokens_predicted_total)", ("model",))
PROMPT_TOKENS = Counter("dx_prompt_tokens_total", "Prompt tokens the engine evaluated for the Ollama API's answers",
                        ("model",))
TOKENS_PER_SECOND = Histogram("dx_generation_tokens_per_second", "Decode speed of each Ollama API answer, "
                              "as the engine timed it", _RATES, ("model",))
ENGINE_STARTS = Counter("dx_engine_starts_total", "Engines started (first load, reload or restart)",
                        ("model", "purpose"))
ENGINE_RESTARTS = Counter("dx_engine_restarts_total", "Engines started again after the previous one died",
                          ("model", "purpose"))
ENGINE_UNLOADS = Counter("dx_engine_unloads_total", "Engines stopped (reason: idle = keep-alive ran out, "
                         "evicted = room for another model, requested = keep_alive 0 or delete, shutdown)",
                         ("model", "purpose", "reason"))
VERIFIED_BYTES = Counter("dx_verified_bytes_total", "Model bytes hashed (SHA-256) before an engine may load them")
VERIFICATIONS = Counter("dx_model_verifications_total", "Models checked before loading (how: hashed = full "
                        "SHA-256, cached = structure checked and the hash remembered)", ("how",))
SCRAPE_FAILURES = Counter("dx_engine_scrape_failures_total", "Scrapes of /metrics that left an engine out "
                          "because it did not answer in time", ("model",))

TOOL_CALLS = Counter("dx_tool_calls_total", "MCP tool calls the model made, by server, tool and decision "
                     "(executed, returned to the client, denied, refused, invalid, error, timeout)",
                     ("server", "tool", "decision"))
TOOL_SECONDS = Histogram("dx_tool_call_duration_seconds", "Time an MCP server took for each call DX ran",
                         _SECONDS, ("server",))
_STARTED = time.time()


# ---------------------------------------------------------------- hooks (called from the parts)
def route_label(path: str) -> str:
    """A bounded label for a request path: the route table's paths, else one name per kind."""
    known = _known_routes()
    if path in known:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/*"
    if path.startswith("/api/"):
        return "/api/other"
    return "engine"  # passed to the default model's engine (web UI, /props, ...)


_known: frozenset[str] = frozenset()


def set_known_routes(paths: Iterable[str]) -> None:
    """The route table's own paths, each its own label (``dx.server.routes`` registers them as it loads)."""
    global _known
    _known = frozenset(p for p in paths if not p.endswith("*"))


def _known_routes() -> frozenset[str]:
    return _known


def request_done(path: str, status: int, started: float, auth_failed: bool) -> None:
    """One answered request (the transport, at its end; ``started``: monotonic time its head was complete)."""
    route = route_label(path)
    REQUESTS.inc(route, str(status) if status else "none")
    DURATION.observe(time.monotonic() - started, route)
    if auth_failed:
        AUTH_FAILURES.inc()
    IN_FLIGHT.inc(by=-1)


def first_token(path: str, started: float) -> None:
    """The head of a streamed answer is going out now (the transport): on a generation route, that is TTFT."""
    route = route_label(path)
    if route in GENERATION_ROUTES:
        TTFT.observe(time.monotonic() - started, route)


def generation(model: str, timings: Any, usage: Any) -> None:
    """An Ollama answer's final numbers (the engine's ``timings`` / ``usage`` blocks)."""
    timings = timings if isinstance(timings, dict) else {}
    usage = usage if isinstance(usage, dict) else {}
    n = timings.get("predicted_n", usage.get("completion_tokens"))
    if isinstance(n, (int, float)) and n > 0:
        GENERATED.inc(model, by=float(n))
    p = timings.get("prompt_n", usage.get("prompt_tokens"))
    if isinstance(p, (int, float)) and p > 0:
        PROMPT_TOKENS.inc(model, by=float(p))
    rate = timings.get("predicted_per_second")
    if isinstance(rate, (int, float)) and rate > 0 and math.isfinite(rate):
        TOKENS_PER_SECOND.observe(float(rate), model)


def model_verified(nbytes: int | None) -> None:
    """The verifier hashed ``nbytes`` (None: the hash came from the cache)."""
    if nbytes is None:
        VERIFICATIONS.inc("cached")
    else:
        VERIFICATIONS.inc("hashed")
        VERIFIED_BYTES.inc(by=float(nbytes))


# ---------------------------------------------------------------- the engines' own metrics
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# a label value may hold any character, "}" included, once escaped as the format says (\\, \", \n)
_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?[ \t]*')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created", "_gsum", "_gcount", "_info")


class Family:
    """One metric family parsed from an engine: HELP, TYPE and its samples (labels without braces)."""

    __slots__ = ("help", "kind", "name", "samples")

    def __init__(self, name: str) -> None:
        self.name = name
        self.help: str | None = None
        self.kind: str | None = None
        self.samples: list[tuple[str, str, str]] = []  # (sample name, labels inside braces, value)


def parse_exposition(text: str) -> dict[str, Family]:
    """An engine's text exposition -> families by name, in order. Lines that do not parse are dropped.

    A sample belongs to the family its name is (or that plus a histogram/counter
    suffix) when that family was announced by HELP/TYPE; otherwise it is its own.
    """
    families: dict[str, Family] = {}

    def family(name: str) -> Family:
        fam = families.get(name)
        if fam is None:
            fam = families[name] = Family(name)
        return fam

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and _NAME.fullmatch(parts[2]):
                fam = family(parts[2])
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    fam.help = rest
                elif rest in ("counter", "gauge", "histogram", "summary", "untyped"):
                    fam.kind = rest
            continue
        m = _SAMPLE.fullmatch(line)
        if m is None:
            continue
        name, labels, value = m.group(1), (m.group(2) or "{}")[1:-1].strip().rstrip(","), m.group(3)
        try:
            float(value)
        except ValueError:
            continue
        owner = name if name in families else next(
            (name[: -len(s)] for s in _SUFFIXES if name.endswith(s) and name[: -len(s)] in families), name)
        family(owner).samples.append((name, labels, value))
    return families


def parse_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The same parse as :func:`parse_exposition`, as {sample name: [(labels, value)]} (what ``dx top`` reads)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in parse_exposition(text).values():
        for name, labels, value in fam.samples:
            parsed = {k: re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], v) for k, v in _LABEL.findall(labels)}
            out.setdefault(name, []).append((parsed, float(value)))
    return out


def merge_engines(per_model: Iterable[tuple[str, dict[str, Family]]]) -> list[str]:
    """Each engine's families with ``model="..."`` added to every sample; HELP and TYPE once per family."""
    merged: dict[str, tuple[Family, list[str]]] = {}
    for model, families in per_model:
        label = f'model="{_escape_label(model)}"'
        for fam in families.values():
            if not fam.samples:
                continue
            entry = merged.setdefault(fam.name, (fam, []))
            for name, labels, value in fam.samples:
                entry[1].append(f"{name}{{{label}{',' + labels if labels else ''}}} {value}")
    out: list[str] = []
    for name, (fam, samples) in merged.items():
        if fam.help is not None:
            out.append(f"# HELP {name} {fam.help}")
        if fam.kind is not None:
            out.append(f"# TYPE {name} {fam.kind}")
        out.extend(samples)
    return out


def _engine_get(engine: Any, path: str, timeout: float) -> bytes | None:
    """GET one of the engine's own routes with its key; None when it does not answer 200 in time."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {engine.api_key}", "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _slot_numbers(raw: bytes) -> dict[str, float] | None:
    """llama-server's /slots -> slots, busy slots, tokens held in the KV cache, its capacity, tokens decoded now."""
    try:
        slots = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(slots, list):
        return None
    out = {"slots": 0.0, "busy": 0.0, "kv_used": 0.0, "kv_capacity": 0.0, "decoding": 0.0}
    for s in slots:
        if not isinstance(s, dict):
            continue
        out["slots"] += 1
        out["kv_capacity"] += float(s.get("n_ctx") or 0)
        out["kv_used"] += float(s.get("n_prompt_tokens") or 0)
        if s.get("is_processing"):
            out["busy"] += 1
            nxt = s.get("next_token")
            if isinstance(nxt, list) and nxt and isinstance(nxt[0], dict):
                out["decoding"] += float(nxt[0].get("n_decoded") or 0)
    return out


_SLOT_GAUGES = (
    ("dx_engine_slots", "slots", "Parallel slots of the model's engine"),
    ("dx_engine_slots_busy", "busy", "Slots working on a request now"),
    ("dx_engine_kv_used_tokens", "kv_used", "Tokens held in the engine's KV cache (sum over slots)"),
    ("dx_engine_kv_capacity_tokens", "kv_capacity", "Tokens the engine's KV cache holds at most (sum over slots)"),
    ("dx_engine_decoding_tokens", "decoding", "Tokens generated so far by the requests in progress (added to "
     "llamacpp:tokens_predicted_total when each ends)"),
)


def _scrape(engine: Any, model: str, timeout: float) -> tuple[dict[str, Family], dict[str, float] | None] | None:
    raw = _engine_get(engine, "/metrics", timeout)
    if raw is None:
        SCRAPE_FAILURES.inc(model)
        return None
    slots_raw = _engine_get(engine, "/slots", timeout)
    return parse_exposition(raw.decode("utf-8", "replace")), _slot_numbers(slots_raw) if slots_raw else None


def _rss_bytes() -> float | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _gauge_lines(name: str, help_text: str, rows: Sequence[tuple[str, float]], label: str = "model") -> list[str]:
    out = [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} gauge"]
    out += [f'{name}{{{label}="{_escape_label(k)}"}} {fmt(v)}' if label else f"{name} {fmt(v)}" for k, v in rows]
    return out


def exposition(families: Iterable[_Family]) -> list[str]:
    """HELP, TYPE and the samples of each family, in order."""
    out: list[str] = []
    for fam in families:
        out += fam.header() + fam.lines()
    return out


def _speculation_lines(loaded: Sequence[Any]) -> list[str]:
    """Whether each model's engine speculates now, and (``--spec auto``) what it measured to decide so."""
    rows = [(lm.name, lm.speculation) for lm in loaded
            if lm.purpose == "generate" and getattr(lm, "speculation", None)]
    lines = _gauge_lines("dx_speculation_active", "The model's engine decodes speculatively now (1) or not (0): "
                         "forced by --spec, or chosen by --spec auto from its measurement",
                         [(m, 1.0 if s.get("speculating") else 0.0) for m, s in rows])
    measured = [(m, s) for m, s in rows if s.get("mode") == "auto"]
    lines += _gauge_lines("dx_speculation_speedup", "--spec auto's last measurement: decode tokens/s with "
                          "speculation over without (kept only where it wins)",
                          [(m, float(s.get("ratio") or 0.0)) for m, s in measured])
    lines += _gauge_lines("dx_speculation_decode_tokens_per_second", "--spec auto's last measurement: decode "
                          "tokens/s of each side", [], "")
    lines += [f'dx_speculation_decode_tokens_per_second{{model="{_escape_label(m)}",speculation="{side}"}} '
              f'{fmt(float(s.get(f"decode_tps_{side}") or 0.0))}' for m, s in measured for side in ("on", "off")]
    return lines


def render(app: Any, timeout: float = ENGINE_TIMEOUT) -> str:
    """The whole exposition: dx's families, the loaded engines' gauges, then their ``llamacpp:*`` samples."""

    loaded = [lm for lm in app.manager.loaded() if lm.engine is not None]
    scraped: list[tuple[str, dict[str, Family]]] = []
    slot_rows: list[tuple[str, dict[str, float]]] = []
    for lm in loaded:  # first, so this scrape's failures are in the counters below
        if lm.purpose != "generate":
            continue  # embedding engines run without --metrics (and would repeat the model label)
        got = _scrape(lm.engine, lm.name, timeout)
        if got is None:
            continue
        scraped.append((lm.name, got[0]))
        if got[1] is not None:
            slot_rows.append((lm.name, got[1]))
    lines = _gauge_lines("dx_build_info", "dx's version", [], "")
    lines.append(f'dx_build_info{{version="{_escape_label(__version__)}"}} 1')
    lines += _gauge_lines("dx_start_time_seconds", "When this dx server started (Unix time)",
                          [("", _STARTED)], "")
    rss = _rss_bytes()
    if rss is not None:
        lines += _gauge_lines("dx_resident_memory_bytes", "dx's own resident memory (engines not included)",
                              [("", rss)], "")
    lines += [
        "# HELP dx_models_loaded Engines running now (one per model and purpose)",
        "# TYPE dx_models_loaded gauge",
        f"dx_models_loaded {len(loaded)}",
        "# HELP dx_engine_up An engine is running for this model and purpose",
        "# TYPE dx_engine_up gauge",
    ]
    lines += [f'dx_engine_up{{model="{_escape_label(lm.name)}",purpose="{_escape_label(lm.purpose)}"}} 1'
              for lm in loaded]
    lines += ["# HELP dx_engine_leases Requests holding the model's engine now", "# TYPE dx_engine_leases gauge"]
    lines += [f'dx_engine_leases{{model="{_escape_label(lm.name)}",purpose="{_escape_label(lm.purpose)}"}} '
              f"{lm.in_use}" for lm in loaded]
    lines += _speculation_lines(loaded)
    lines += exposition(REGISTRY)
    for name, key, help_text in _SLOT_GAUGES:
        lines += _gauge_lines(name, help_text, [(m, nums[key]) for m, nums in slot_rows])
    lines += merge_engines(scraped)
    return "\n".join(lines) + "\n"


def serve(req: Any) -> None:
    """``GET /metrics`` (behind the API key, like every non-public route)."""
    req.send_text(200, render(req.app), CONTENT_TYPE)
