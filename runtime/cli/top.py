"""``dx top``: a live view of a running ``dx serve``, read from its ``/metrics`` once a second.

Everything shown comes from one scrape of the server's ``GET /metrics``
(``dx.metrics``), which already carries each engine's own ``llamacpp:*``
numbers and slots; nothing here talks to an engine. The parts:

* ``parse_metrics`` — exposition text -> samples (stdlib; the executable has no
  ``prometheus_client``);
* ``History`` — the scrapes of the last minute; ``History.view()`` turns them
  into a ``View`` (rates and quantiles are differences between scrapes);
* ``render`` / ``plain_line`` — a ``View`` -> the screen's lines / one line:
  pure functions, unit-tested;
* ``run`` — the thin loop: curses on a terminal, one line per second otherwise.

Tokens/s counts every API's tokens: the engine's ``llamacpp:tokens_predicted_total``
(which grows when a request ends) plus ``dx_engine_decoding_tokens`` (what the
requests in progress have generated so far, from the engine's /slots), so the
rate moves while long answers stream, not only when they end.
"""

from __future__ import annotations

import collections
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import click

from dx import config
from dx.metrics import parse_samples as parse_metrics  # the one Prometheus text parser

Metrics = dict[str, list[tuple[dict[str, str], float]]]

WINDOW = 60.0  # seconds of history for the sparkline, the TTFT quantiles and the per-minute counts


def total(metrics: Metrics, name: str, **match: str) -> float:
    """Sum of a sample's values over the series whose labels include ``match``."""
    return sum(v for labels, v in metrics.get(name, ()) if all(labels.get(k) == want for k, want in match.items()))


def by_label(metrics: Metrics, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in metrics.get(name, ()):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + v
    return out


def buckets(metrics: Metrics, name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets summed over its series: [(upper bound, count)], ascending."""
    acc: dict[float, float] = {}
    for labels, v in metrics.get(f"{name}_bucket", ()):
        le = labels.get("le", "")
        try:
            bound = math.inf if le in ("+Inf", "Inf", "inf") else float(le)
        except ValueError:
            continue
        acc[bound] = acc.get(bound, 0.0) + v
    return sorted(acc.items())


def quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear within the bucket the rank falls in; None when empty."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # above the highest finite bucket: its bound is all we know
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _delta_buckets(new: Sequence[tuple[float, float]], old: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    before = dict(old)
    return [(b, max(0.0, c - before.get(b, 0.0))) for b, c in new]


# ---------------------------------------------------------------- the view
@dataclass(frozen=True)
class ModelRow:
    name: str
    slots_busy: int | None
    slots_total: int | None
    kv_used: float | None
    kv_capacity: float | None
    tokens_per_s: float
    drafted: float  # speculative draft tokens so far (llamacpp:spec_decode_num_draft_tokens_total)
    accepted: float
    spec_active: float | None = None  # dx_speculation_active: None when the model has no speculation
    spec_speedup: float | None = None  # dx_speculation_speedup: --spec auto's measured on/off ratio


@dataclass(frozen=True)
class View:
    url: str
    version: str = ""
    uptime: float | None = None
    rss: float | None = None
    models: tuple[ModelRow, ...] = ()
    in_flight: int = 0
    waiting: int = 0  # requests the engines hold back until a slot is free (llamacpp:requests_deferred)
    tokens_per_s: float = 0.0
    spark: tuple[float, ...] = ()
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    ttft_streams: int = 0
    requests: float = 0.0
    requests_per_min: float = 0.0
    errors_4xx: float = 0.0
    errors_5xx: float = 0.0
    rejected: float = 0.0
    auth_failures: float = 0.0
    scrape_failures: float = 0.0
    error: str | None = None


@dataclass
class History:
    """The scrapes of the last ``WINDOW`` seconds (and the tokens/s between each two) for one server."""

    url: str
    window: float = WINDOW
    scrapes: collections.deque[tuple[float, Metrics]] = field(default_factory=collections.deque)
    rates: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    error: str | None = None

    def add(self, t: float, metrics: Metrics) -> None:
        """A scrape taken at monotonic time ``t``."""
        self.error = None
        if self.scrapes:
            t0, m0 = self.scrapes[-1]
            if t > t0:
                self.rates.append((t, max(0.0, _tokens(metrics) - _tokens(m0)) / (t - t0)))
        self.scrapes.append((t, metrics))
        while len(self.scrapes) > 2 and self.scrapes[1][0] <= t - self.window:
            self.scrapes.popleft()
        while self.rates and self.rates[0][0] <= t - self.window:
            self.rates.popleft()

    def failed(self, message: str) -> None:
        self.error = message

    def view(self) -> View:
        if not self.scrapes:
            return View(url=self.url, error=self.error)
        t_new, new = self.scrapes[-1]
        t_old, old = self.scrapes[0]
        span = t_new - t_old
        prev = self.scrapes[-2] if len(self.scrapes) > 1 else None
        ttft = _delta_buckets(buckets(new, "dx_time_to_first_token_seconds"),
                              buckets(old, "dx_time_to_first_token_seconds")) if span > 0 else []
        codes = by_label(new, "dx_requests_total", "code")
        requests = _api_requests(new)
        started = total(new, "dx_start_time_seconds")
        version = next((labels.get("version", "") for labels, _ in new.get("dx_build_info", ())), "")
        return View(
            url=self.url,
            version=version,
            uptime=(time.time() - started) if started else None,
            rss=total(new, "dx_resident_memory_bytes") or None,
            models=tuple(_model_rows(new, prev[1] if prev else None, t_new - prev[0] if prev else 0.0)),
            in_flight=max(0, int(total(new, "dx_requests_in_flight")) - 1),  # not counting this scrape
            waiting=int(total(new, "llamacpp:requests_deferred")),
            tokens_per_s=self.rates[-1][1] if self.rates else 0.0,
            spark=tuple(r for _, r in self.rates),
            ttft_p50=quantile(0.5, ttft),
            ttft_p95=quantile(0.95, ttft),
            ttft_streams=int(ttft[-1][1]) if ttft else 0,
            requests=requests,
            requests_per_min=(requests - _api_requests(old)) * 60.0 / span if span > 0 else 0.0,
            errors_4xx=sum(v for c, v in codes.items() if c.startswith("4")),
            errors_5xx=sum(v for c, v in codes.items() if c.startswith("5")),
            rejected=total(new, "dx_rejected_total"),
            auth_failures=total(new, "dx_auth_failures_total"),
            scrape_failures=total(new, "dx_engine_scrape_failures_total"),
            error=self.error,
        )


def _api_requests(metrics: Metrics) -> float:
    """Requests answered, the scrapes of /metrics (this dashboard's own) left out."""
    return sum(v for labels, v in metrics.get("dx_requests_total", ()) if labels.get("route") != "/metrics")


def _tokens(metrics: Metrics, model: str | None = None) -> float:
    match = {} if model is None else {"model": model}
    return total(metrics, "llamacpp:tokens_predicted_total", **match) + total(
        metrics, "dx_engine_decoding_tokens", **match)


def _model_rows(new: Metrics, prev: Metrics | None, dt: float) -> Iterable[ModelRow]:
    gen = [labels.get("model", "") for labels, v in new.get("dx_engine_up", ()) if v and
           labels.get("purpose", "generate") == "generate"]
    for name in sorted(set(gen)):
        def one(metric: str, name: str = name) -> float | None:
            series = [v for labels, v in new.get(metric, ()) if labels.get("model") == name]
            return sum(series) if series else None

        rate = 0.0
        if prev is not None and dt > 0:
            rate = max(0.0, _tokens(new, name) - _tokens(prev, name)) / dt
        busy, slots = one("dx_engine_slots_busy"), one("dx_engine_slots")
        yield ModelRow(
            name=name, slots_busy=None if busy is None else int(busy), slots_total=None if slots is None else int(slots),
            kv_used=one("dx_engine_kv_used_tokens"), kv_capacity=one("dx_engine_kv_capacity_tokens"),
            tokens_per_s=rate,
            drafted=one("llamacpp:spec_decode_num_draft_tokens_total") or 0.0,
            accepted=one("llamacpp:spec_decode_num_accepted_tokens_total") or 0.0,
            spec_active=one("dx_speculation_active"), spec_speedup=one("dx_speculation_speedup"),
        )


# ---------------------------------------------------------------- rendering (pure)
SPARK_UNICODE = " ▁▂▃▄▅▆▇█"
SPARK_ASCII = " .:-=+*#%@"


def sparkline(values: Sequence[float], width: int, chars: str = SPARK_UNICODE) -> str:
    """The last ``width`` values as bars scaled to their maximum."""
    values = list(values)[-width:] if width > 0 else []
    top = max(values, default=0.0)
    if top <= 0:
        return chars[0] * len(values)
    steps = len(chars) - 1
    return "".join(chars[min(steps, math.ceil(v / top * steps))] if v > 0 else chars[0] for v in values)


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _slots(row: ModelRow) -> str:
    if row.slots_total is None:
        return "?/?"
    return f"{row.slots_busy or 0}/{row.slots_total}"


def _kv(row: ModelRow) -> str:
    if not row.kv_capacity:
        return "-"
    return f"{100 * (row.kv_used or 0) / row.kv_capacity:.0f}% ({int(row.kv_used or 0)}/{int(row.kv_capacity)})"


def _accept(row: ModelRow) -> str:
    """Speculation: on/off, --spec auto's measured ratio, then the acceptance of the drafts so far."""
    state = "" if row.spec_active is None else ("on" if row.spec_active else "off")
    if state and row.spec_speedup is not None:
        state += f" (auto {row.spec_speedup:.2f}x)"
    if row.drafted <= 0:  # no draft tokens yet: speculation off, or no answer finished since the engine started
        return state or "-"
    return f"{state + ' ' if state else ''}{100 * row.accepted / row.drafted:.0f}% of {int(row.drafted)}"


def render(view: View, width: int = 100, spark_chars: str = SPARK_UNICODE, clock: str = "") -> list[str]:
    """The dashboard's lines for ``view``, each at most ``width`` characters."""
    head = f"dx top  {view.url}"
    if view.version:
        head += f"  dx {view.version}"
    if view.uptime is not None:
        head += f"  up {_duration(view.uptime)}"
    if view.rss is not None:
        head += f"  RSS {view.rss / 1e6:.1f} MB"
    if clock:
        head = head.ljust(max(0, width - len(clock) - 1)) + " " + clock
    lines = [head]
    if view.error:
        lines.append(f"! {view.error}")
    busy = sum(r.slots_busy or 0 for r in view.models)
    slots = sum(r.slots_total or 0 for r in view.models)
    waiting = f" ({view.waiting} waiting for a slot)" if view.waiting else ""
    lines.append(f"models loaded {len(view.models)}   requests in flight {view.in_flight}{waiting}   slots busy "
                 f"{busy}/{slots}   requests {int(view.requests)} ({view.requests_per_min:.0f}/min)")
    label = f"tokens/s {view.tokens_per_s:7.1f}  "
    lines.append(label + sparkline(view.spark, max(0, min(60, width - len(label) - 1)), spark_chars))
    if view.ttft_streams:
        lines.append(f"TTFT last minute  p50 {_secs(view.ttft_p50)}   p95 {_secs(view.ttft_p95)}"
                     f"   ({view.ttft_streams} streams)")
    else:
        lines.append("TTFT last minute  - (no streamed answers)")
    lines.append(f"errors  4xx {int(view.errors_4xx)}   5xx {int(view.errors_5xx)}   refused busy {int(view.rejected)}"
                 f"   auth failures {int(view.auth_failures)}   engine scrape misses {int(view.scrape_failures)}")
    lines.append("")
    rows = [("MODEL", "SLOTS", "KV CACHE", "TOK/S", "SPECULATION")]
    rows += [(r.name, _slots(r), _kv(r), f"{r.tokens_per_s:.1f}", _accept(r)) for r in view.models]
    if len(rows) == 1:
        rows.append(("(no model loaded)", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    lines.append("q quits")
    return [line[:width] for line in lines]


def plain_line(view: View, clock: str = "") -> str:
    """One line for a pipe or a log: the same numbers, space-separated ``key=value``."""
    if view.error and not view.models and not view.requests:
        return f"{clock} error={view.error}".strip()
    busy = sum(r.slots_busy or 0 for r in view.models)
    slots = sum(r.slots_total or 0 for r in view.models)
    kv_used = sum(r.kv_used or 0 for r in view.models)
    kv_cap = sum(r.kv_capacity or 0 for r in view.models)
    drafted = sum(r.drafted for r in view.models)
    parts = [
        clock,
        f"models={','.join(r.name for r in view.models) or '-'}",
        f"in_flight={view.in_flight}",
        f"slots={busy}/{slots}",
        f"kv={100 * kv_used / kv_cap:.0f}%" if kv_cap else "kv=-",
        f"tok/s={view.tokens_per_s:.1f}",
        f"ttft_p50={_secs(view.ttft_p50).replace(' ', '')}",
        f"ttft_p95={_secs(view.ttft_p95).replace(' ', '')}",
        f"4xx={int(view.errors_4xx)}",
        f"5xx={int(view.errors_5xx)}",
        f"spec={100 * sum(r.accepted for r in view.models) / drafted:.0f}%" if drafted else "spec=-",
    ]
    if view.error:
        parts.append(f"error={view.error}")
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------- the loop (thin)
def fetch(base: str, key: str | None, timeout: float = 5.0) -> str:
    """``GET base/metrics``; a DXError line when the server is not there or refuses the key."""
    import urllib.error
    import urllib.request

    from dx.cli.chat import ServerError, _error_text

    req = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise ServerError(f"{base} refused the API key (HTTP 401)",
                              hint="set DX_API_KEY to the server's key, or run dx top as the user that runs "
                                   "dx serve (~/.dx/api_key)") from None
        raise ServerError(f"{base}/metrics answered HTTP {e.code}: {_error_text(e.read())}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ServerError(f"no dx server at {base}: {getattr(e, 'reason', e)}",
                          hint="start one with `dx serve`, or point --host/DX_HOST at it") from None


class Sampler:
    """Scrapes ``base``'s /metrics into a ``History``; a failed scrape is shown, the history kept."""

    def __init__(self, base: str, key: str | None, get: Callable[[str, str | None], str] = fetch) -> None:
        self.history = History(url=base)
        self._base, self._key, self._get = base, key, get

    def sample(self) -> View:
        from dxverify.errors import DXError

        t = time.monotonic()
        try:
            metrics = parse_metrics(self._get(self._base, self._key))
        except DXError as exc:
            self.history.failed(str(exc))
        else:
            self.history.add(t, metrics)
        return self.history.view()


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def run(base: str, key: str | None, *, once: bool = False, interval: float = 1.0,
        tty: bool | None = None, out=None) -> None:  # type: ignore[no-untyped-def]
    """Attach to the server at ``base``: curses on a terminal, else one line per ``interval``."""
    out = out or sys.stdout
    sampler = Sampler(base, key)
    sampler.history.add(time.monotonic(), parse_metrics(fetch(base, key)))  # unreachable, wrong key: one line
    if once:  # two scrapes, so the rates have an interval
        time.sleep(interval)
        print("\n".join(render(sampler.sample(), 120, _spark_chars(), _clock())), file=out, flush=True)
        return
    if tty is None:
        tty = out.isatty() and sys.stdin.isatty()
    if not tty:
        try:
            while True:
                time.sleep(interval)
                print(plain_line(sampler.sample(), _clock()), file=out, flush=True)
        except (KeyboardInterrupt, BrokenPipeError):
            return
    import curses

    try:
        curses.wrapper(_screen, sampler, interval)
    except KeyboardInterrupt:
        return


def _spark_chars() -> str:
    import locale

    return SPARK_UNICODE if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8" else SPARK_ASCII


def _screen(stdscr, sampler: Sampler, interval: float) -> None:  # type: ignore[no-untyped-def]
    import curses

    with _suppress(curses.error):
        curses.curs_set(0)
    stdscr.timeout(100)
    chars = _spark_chars()
    view, due = sampler.history.view(), 0.0
    while True:
        now = time.monotonic()
        if now >= due:
            view, due = sampler.sample(), now + interval
            height, width = stdscr.getmaxyx()
            stdscr.erase()
            for y, line in enumerate(render(view, max(20, width - 1), chars, _clock())[: max(0, height)]):
                with _suppress(curses.error):  # the bottom-right cell cannot be written
                    stdscr.addnstr(y, 0, line, max(0, width - 1))
            stdscr.refresh()
        key = stdscr.getch()
        if key in (ord("q"), ord("Q"), 27):
            return
        if key == curses.KEY_RESIZE:
            due = 0.0


def _suppress(exc: type[BaseException]):  # type: ignore[no-untyped-def]
    import contextlib

    return contextlib.suppress(exc)


def main(host: str | None, once: bool = False, interval: float = 1.0) -> None:
    """``dx top``: the server at ``host`` (as ``dx ps`` finds it), with its key (DX_API_KEY, else ~/.dx/api_key)."""

    from dx.cli.chat import _key_from_home, normalize_host

    base = normalize_host(host or "127.0.0.1")
    run(base, config.api_key_env() or _key_from_home(), once=once, interval=interval)


@click.command("top")
@click.option("--host", envvar=config.HOST_ENV, default=None,
              help="The dx server (host[:port] or URL; DX_HOST; default 127.0.0.1:11434).")
@click.option("--once", is_flag=True, help="Print one snapshot (two scrapes a second apart) and exit.")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="Seconds between scrapes.")
def top_cmd(host: str | None, once: bool, interval: float) -> None:
    """A live dashboard of a running dx server: models, slots, KV cache, tokens/s, TTFT, errors.

    Reads the server's /metrics with the same host and key as `dx ps` (DX_API_KEY, else ~/.dx/api_key).
    On a terminal it redraws every second (q quits); piped, it prints one line per second.
    """
    main(host, once, interval)  # curses loads only here, on a terminal
