"""``dx top``: the view is a pure function of scrapes (unit tests), and the real command attaches to a
real ``dx serve`` under load: in ``tmux`` (keys sent, the pane captured), piped (one line per second),
``--once``, and with a wrong key or no server (one line)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from support.serve_harness import DXServer, engine_binary, start_dx, wait_for
from support.tools import need

from dx.cli import top

MODEL = "smollm2:135m"


# ------------------------------------------------------------------ pure parts
def scrape_text(tokens: float, decoding: float, ttft: dict[str, float], requests: float, busy: int = 2,
                drafted: float = 0, accepted: float = 0) -> str:
    """A /metrics body shaped like dx.metrics.render's (the families dx top reads)."""
    buckets = "\n".join(
        f'dx_time_to_first_token_seconds_bucket{{route="/api/chat",le="{le}"}} {n}' for le, n in ttft.items())
    return f"""# TYPE dx_build_info gauge
dx_build_info{{version="9.9"}} 1
dx_requests_in_flight 3
dx_requests_total{{route="/api/chat",code="200"}} {requests}
dx_requests_total{{route="/metrics",code="200"}} 500
dx_requests_total{{route="/api/chat",code="404"}} 2
dx_requests_total{{route="/v1/completions",code="503"}} 1
dx_auth_failures_total 4
dx_engine_up{{model="m\\"1",purpose="generate"}} 1
dx_engine_up{{model="m\\"1",purpose="embed"}} 1
dx_engine_slots{{model="m\\"1"}} 4
dx_engine_slots_busy{{model="m\\"1"}} {busy}
dx_engine_kv_used_tokens{{model="m\\"1"}} 1024
dx_engine_kv_capacity_tokens{{model="m\\"1"}} 4096
dx_engine_decoding_tokens{{model="m\\"1"}} {decoding}
llamacpp:tokens_predicted_total{{model="m\\"1"}} {tokens}
llamacpp:requests_deferred{{model="m\\"1"}} 1
llamacpp:spec_decode_num_draft_tokens_total{{model="m\\"1"}} {drafted}
llamacpp:spec_decode_num_accepted_tokens_total{{model="m\\"1"}} {accepted}
{buckets}
"""


def history() -> top.History:
    h = top.History(url="http://127.0.0.1:11434")
    h.add(100.0, top.parse_metrics(scrape_text(1000, 0, {"0.1": 1, "0.5": 1, "1.0": 1, "+Inf": 1}, 10)))
    h.add(102.0, top.parse_metrics(scrape_text(1100, 20, {"0.1": 1, "0.5": 5, "1.0": 11, "+Inf": 11}, 40,
                                               drafted=200, accepted=150)))
    return h


def test_view_from_two_scrapes() -> None:
    v = history().view()
    assert v.tokens_per_s == pytest.approx(60.0)  # (1100 + 20 - 1000) tokens in 2 s
    [row] = v.models  # the embedding engine is not a row
    assert (row.name, row.slots_busy, row.slots_total, row.kv_used, row.kv_capacity) == ('m"1', 2, 4, 1024, 4096)
    assert row.tokens_per_s == pytest.approx(60.0)
    assert v.in_flight == 2 and v.waiting == 1  # the scrape itself is not counted
    assert v.requests == 40 + 2 + 1 and v.requests_per_min == pytest.approx(30 * 60 / 2)  # /metrics left out
    assert (v.errors_4xx, v.errors_5xx, v.auth_failures) == (2, 1, 4)
    # 10 streams in the window: 4 in (0.1, 0.5], 6 in (0.5, 1.0]; the first scrape's one is not
    assert v.ttft_streams == 10
    assert v.ttft_p50 == pytest.approx(0.5 + 0.5 * (5 - 4) / 6)
    assert v.ttft_p95 == pytest.approx(0.5 + 0.5 * (9.5 - 4) / 6)
    assert v.version == "9.9"


def test_render_is_the_view_on_screen() -> None:
    lines = top.render(history().view(), width=90, clock="12:00:00")
    text = "\n".join(lines)
    assert all(len(line) <= 90 for line in lines)
    assert lines[0].endswith("12:00:00") and "dx 9.9" in lines[0]
    assert "models loaded 1   requests in flight 2 (1 waiting for a slot)   slots busy 2/4" in text
    assert re.search(r"tokens/s\s+60\.0", text)
    assert "p50 583 ms" in text and "(10 streams)" in text
    assert "4xx 2   5xx 1" in text and "auth failures 4" in text
    row = next(line for line in lines if line.startswith('m"1'))
    assert row.split() == ['m"1', "2/4", "25%", "(1024/4096)", "60.0", "75%", "of", "200"]


def test_plain_line() -> None:
    line = top.plain_line(history().view(), "12:00:00")
    assert line.split() == ["12:00:00", 'models=m"1', "in_flight=2", "slots=2/4", "kv=25%", "tok/s=60.0",
                            "ttft_p50=583ms", "ttft_p95=958ms", "4xx=2", "5xx=1", "spec=75%"]


def test_no_scrape_yet_and_failures_are_shown() -> None:
    h = top.History(url="u")
    h.failed("no dx server at u")
    assert top.plain_line(h.view()) == "error=no dx server at u"
    assert "! no dx server at u" in top.render(h.view())
    h = history()
    h.failed("lost it")
    assert "! lost it" in top.render(h.view()) and h.view().models  # the last numbers stay on screen


def test_sparkline_and_quantile_edges() -> None:
    assert top.sparkline([0, 5, 10], 10) == " ▄█"  # half of the top bar
    assert top.sparkline([0, 0], 5) == "  "
    assert top.sparkline(range(100), 4, top.SPARK_ASCII) == "@@@@"
    assert top.quantile(0.5, []) is None
    assert top.quantile(0.5, [(1.0, 0), (float("inf"), 0)]) is None
    assert top.quantile(0.99, [(1.0, 1), (float("inf"), 10)]) == 1.0  # past the last finite bound


def test_window_forgets_old_scrapes() -> None:
    h = top.History(url="u", window=10)
    for t in range(0, 30, 2):
        h.add(float(t), top.parse_metrics(scrape_text(t * 10, 0, {"+Inf": t}, t)))
    assert h.scrapes[0][0] >= 28 - 10 - 2 and len(h.rates) <= 5
    assert h.view().ttft_streams == 28 - h.scrapes[0][0]


# ------------------------------------------------------------------ a real server under load
@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    tmp = tmp_path_factory.mktemp("top")
    Store(root=tmp / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    server = start_dx(tmp, "--ctx", "1024", engine=engine_binary(request), model=MODEL)
    yield server
    server.stop()


@pytest.fixture
def load(dx: DXServer):  # type: ignore[no-untyped-def]
    """Two clients streaming answers until the test ends."""
    stop = threading.Event()
    client = dx.openai(timeout=300)

    def stream() -> None:
        while not stop.is_set():
            for _chunk in client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=48,
                                                    stream=True):
                if stop.is_set():
                    break

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join(120)


def top_env(dx: DXServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DX_API_KEY", "DX_HOST")}
    return {**env, "DX_HOME": str(dx.home), "PYTHONUNBUFFERED": "1", **extra}  # the key from DX_HOME, as dx ps


@pytest.mark.integration
def test_top_in_tmux_under_load(dx: DXServer, load: None, tmp_path: Path) -> None:
    need("tmux")
    sock, env = f"dx-top-{uuid.uuid4().hex[:8]}", top_env(dx, LANG="C.UTF-8", TERM="xterm-256color")
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    script = tmp_path / "top.sh"
    script.write_text(f"exec {sys.executable} -m dx top --host {dx.url} 2>{tmp_path / 'top.err'}\n")
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "120", "-y", "30", "sh", str(script)],
                   env=env, check=True, timeout=30)
    try:
        pane = ""

        def shows_work() -> bool:
            nonlocal pane
            pane = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True,
                                  timeout=10).stdout
            rate = re.search(r"tokens/s\s+([0-9.]+)", pane)
            return MODEL in pane and rate is not None and float(rate.group(1)) > 0

        assert wait_for(shows_work, 120, 0.5), pane + (tmp_path / "top.err").read_text()
        assert re.search(r"slots busy \d/4", pane) and "SLOTS" in pane and "KV CACHE" in pane
        row = next(line for line in pane.splitlines() if line.startswith(MODEL))
        assert re.match(rf"{re.escape(MODEL)}\s+\d/4\s+\d+% \(\d+/4096\)", row)
        subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True, timeout=10)
        assert wait_for(lambda: subprocess.run([*tmux, "has-session", "-t", "top"], capture_output=True,
                                               timeout=10).returncode != 0, 10), "q did not quit dx top"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)


@pytest.mark.integration
def test_top_piped_prints_a_line_a_second(dx: DXServer, load: None) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "dx", "top", "--host", dx.url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=top_env(dx))
    try:
        assert proc.stdout is not None
        t0 = time.monotonic()
        lines = [proc.stdout.readline() for _ in range(3)]
        took = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(10)
    assert 1.5 < took < 30
    for line in lines:
        assert re.fullmatch(rf"\d\d:\d\d:\d\d models={re.escape(MODEL)} in_flight=\d+ slots=\d/4 kv=\d+% "
                            r"tok/s=[0-9.]+ ttft_p50=\S+ ttft_p95=\S+ 4xx=\d+ 5xx=\d+ spec=-\n", line), line


@pytest.mark.integration
def test_top_once(dx: DXServer) -> None:
    res = subprocess.run([sys.executable, "-m", "dx", "top", "--once", "--host", dx.url],
                         capture_output=True, text=True, timeout=60, env=top_env(dx, DX_API_KEY=dx.api_key or ""))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"dx top  {dx.url}")
    assert re.search(rf"^{re.escape(MODEL)}\s+\d/4\s", res.stdout, re.M), res.stdout


@pytest.mark.integration
def test_top_wrong_key_or_no_server_is_one_line(dx: DXServer, tmp_path: Path) -> None:
    wrong = subprocess.run([sys.executable, "-m", "dx", "top", "--host", dx.url], capture_output=True, text=True,
                           timeout=60, env=top_env(dx, DX_API_KEY="not-the-key"))
    assert wrong.returncode == 8 and wrong.stdout == ""
    assert wrong.stderr.count("\n") == 1 and "refused the API key (HTTP 401)" in wrong.stderr, wrong.stderr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    gone = subprocess.run([sys.executable, "-m", "dx", "top", "--host", f"127.0.0.1:{port}"], capture_output=True,
                          text=True, timeout=60, env=top_env(dx))
    assert gone.returncode == 8 and gone.stderr.count("\n") == 1 and "no dx server at" in gone.stderr, gone.stderr


@pytest.mark.integration
def test_top_shows_speculative_acceptance(request: pytest.FixtureRequest, smollm2_gguf: Path,
                                          tmp_path: Path) -> None:
    """SmolLM2 as its own draft (`dx serve --draft --spec on`): the engine's draft counters reach the SPECULATION
    column, after its state."""
    from dx.models.catalog import Store

    Store(root=tmp_path / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    server = start_dx(tmp_path, "--ctx", "1024", "--parallel", "1", "--draft", MODEL, "--spec", "on",
                      engine=engine_binary(request),
                      model=MODEL, timeout=120)
    try:
        client = server.openai(timeout=300)
        done = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=24, temperature=0)
        assert done.usage is not None and done.usage.completion_tokens == 24
        res = subprocess.run([sys.executable, "-m", "dx", "top", "--once", "--host", server.url],
                             capture_output=True, text=True, timeout=60, env=top_env(server))
        assert res.returncode == 0, res.stderr
        row = next(line for line in res.stdout.splitlines() if line.startswith(MODEL))
        accept = re.search(r" on (\d+)% of (\d+)$", row)
        assert accept is not None and int(accept.group(2)) > 0, res.stdout
        assert int(accept.group(1)) >= 50  # its own draft: greedy drafts are the target's own tokens
    finally:
        server.stop()
