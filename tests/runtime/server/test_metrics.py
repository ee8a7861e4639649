"""``GET /metrics``: dx's own counters and histograms plus each engine's ``llamacpp:*`` samples.

The exposition is written by hand (the runtime has no ``prometheus_client``), so
every test reads it back with ``prometheus_client``'s own parser. The
integration tests run a real ``dx serve`` with SmolLM2 and the real engine, and
make their requests with the real ``openai`` and ``ollama`` clients.
"""

from __future__ import annotations

import http.client
import math
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.serve_harness import DXServer, engine_binary, start_dx, wait_for

from dx import metrics
from dx.server import routes as _routes  # noqa: F401  (registers the route table's paths with dx.metrics)

MODEL = "smollm2:135m"
CTX = 1024


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    return sum(v for n, lab, v in samples(text) if n == name and all(lab.get(k) == x for k, x in labels.items()))


# ------------------------------------------------------------------ the format (no server)
def test_families_written_in_the_text_format() -> None:
    reg: list = []
    c = metrics.Counter("t_requests_total", "Requests\nby code \\ route", ("route", "code"), registry=reg)
    g = metrics.Gauge("t_depth", "Depth", registry=reg)
    h = metrics.Histogram("t_seconds", "Seconds", (0.1, 1.0), ("route",), registry=reg)
    odd = 'we"ird\\name\nx'
    c.inc(odd, "200")
    c.inc(odd, "200", by=2)
    g.set(3.5)
    for v in (0.05, 0.5, 0.5, 7.0):
        h.observe(v, "/api/chat")
    text = "\n".join(metrics.exposition(reg)) + "\n"
    fams = families(text)
    assert fams["t_requests"].type == "counter"
    assert fams["t_requests"].documentation == "Requests\nby code \\ route"
    assert [(s.labels, s.value) for s in fams["t_requests"].samples] == [({"route": odd, "code": "200"}, 3.0)]
    assert fams["t_depth"].samples[0].value == 3.5
    hist = {(s.name, s.labels.get("le")): s.value for s in fams["t_seconds"].samples}
    assert hist == {("t_seconds_bucket", "0.1"): 1, ("t_seconds_bucket", "1.0"): 3, ("t_seconds_bucket", "+Inf"): 4,
                    ("t_seconds_count", None): 4, ("t_seconds_sum", None): pytest.approx(8.05)}


def test_values_spelled_as_the_format_wants() -> None:
    assert [metrics.fmt(v) for v in (3.0, 0.25, math.inf, -math.inf, math.nan, 1e20)] == \
        ["3", "0.25", "+Inf", "-Inf", "NaN", "1e+20"]


# What llama-server's to_metrics() writes (tools/server/server-task.cpp), C++ stream formatting included.
ENGINE_TEXT = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1234
# HELP llamacpp:prompt_seconds_total Total time spent processing prompts
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 1.23457e+06
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds nan
# HELP llamacpp:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per draft position
# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 9
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="1"} 4
"""


def test_engine_samples_relabelled_by_model_help_and_type_once() -> None:
    lines = metrics.merge_engines([("a", metrics.parse_exposition(ENGINE_TEXT)),
                                   ('b"2', metrics.parse_exposition(ENGINE_TEXT + "garbage line {\nx 1 2 3 4\n"))])
    text = "\n".join(lines) + "\n"
    assert text.count("# TYPE llamacpp:prompt_tokens_total counter") == 1
    got = samples(text)
    assert ("llamacpp:prompt_tokens_total", {"model": "a"}, 1234) in got
    assert ("llamacpp:prompt_tokens_total", {"model": 'b"2'}, 1234) in got
    assert ("llamacpp:prompt_seconds_total", {"model": "a"}, 1.23457e6) in got
    assert ("llamacpp:spec_decode_num_accepted_tokens_per_pos_total", {"model": "a", "position": "1"}, 4) in got
    assert sorted({lab["model"] for _, lab, _ in got}) == ["a", 'b"2']
    assert all(n.startswith("llamacpp:") for n, _, _ in got)  # the malformed lines were dropped


def test_route_labels_are_bounded() -> None:
    assert metrics.route_label("/api/chat") == "/api/chat"
    assert metrics.route_label("/metrics") == "/metrics"
    assert metrics.route_label("/v1/models/hf.co/x/y:z") == "/v1/models/*"
    assert metrics.route_label("/api/nothing-here") == "/api/other"
    assert metrics.route_label("/props") == metrics.route_label("/assets/x.js") == "engine"


# ------------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    tmp = tmp_path_factory.mktemp("metrics")
    Store(root=tmp / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    server = start_dx(tmp, "--ctx", str(CTX), engine=engine_binary(request), model=MODEL)
    yield server
    server.stop()


def scrape(dx: DXServer, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", dx.port, timeout=30)
    conn.request("GET", "/metrics", headers=dx.headers if headers is None else headers)
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, resp.getheader("Content-Type", ""), body


def ready(dx: DXServer) -> str:
    """A scrape once the engine is loaded and answers (dx serve MODEL preloads it in the background)."""
    box: list[str] = []
    assert wait_for(lambda: box.append(scrape(dx)[2]) or value(box[-1], "dx_engine_slots", model=MODEL) > 0, 120)
    return box[-1]



@pytest.mark.integration
def test_metrics_needs_the_key_and_counts_refusals(dx: DXServer) -> None:
    before = value(scrape(dx)[2], "dx_auth_failures_total")
    assert scrape(dx, {})[0] == 401
    assert scrape(dx, {"Authorization": "Bearer wrong"})[0] == 401
    status, ctype, text = scrape(dx)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert value(text, "dx_auth_failures_total") == before + 2
    assert value(text, "dx_requests_total", route="/metrics", code="401") >= 2


@pytest.mark.integration
def test_counters_move_with_real_requests(dx: DXServer) -> None:
    before = ready(dx)
    oai = dx.openai(timeout=120)
    oll = dx.ollama(timeout=120)
    chunks = list(oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=8, temperature=0, stream=True))
    assert chunks
    done = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert done.usage is not None and done.usage.completion_tokens == 6
    answer = oll.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 5})
    streamed = list(oll.generate(model=MODEL, prompt="The sky is", stream=True, options={"num_predict": 5}))
    # A request is counted when its handler ends, just after the last bytes leave: a client that stops
    # reading at the final NDJSON line can scrape before that. Read once only the scrape itself is in flight.
    box: list[str] = []
    assert wait_for(lambda: box.append(scrape(dx)[2]) or value(box[-1], "dx_requests_in_flight") == 1, 10)
    after = box[-1]

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("dx_requests_total", route="/v1/chat/completions", code="200") == 1
    assert moved("dx_requests_total", route="/v1/completions", code="200") == 1
    assert moved("dx_requests_total", route="/api/chat", code="200") == 1
    assert moved("dx_requests_total", route="/api/generate", code="200") == 1
    # streamed answers only: the OpenAI stream and the Ollama generate stream, not the two whole answers
    assert moved("dx_time_to_first_token_seconds_count", route="/v1/chat/completions") == 1
    assert moved("dx_time_to_first_token_seconds_count", route="/api/generate") == 1
    assert moved("dx_time_to_first_token_seconds_count", route="/api/chat") == 0
    assert 0 < moved("dx_time_to_first_token_seconds_sum") < moved("dx_request_duration_seconds_sum")
    generated = answer.eval_count + streamed[-1].eval_count
    assert moved("dx_generated_tokens_total", model=MODEL) == generated  # the Ollama API's answers
    assert moved("dx_generation_tokens_per_second_count", model=MODEL) == 2
    # every API's tokens, counted by the engine itself
    assert moved("llamacpp:tokens_predicted_total", model=MODEL) >= generated + 6 + 1
    assert value(after, "dx_requests_in_flight") == 1  # the scrape itself


@pytest.mark.integration
def test_engine_metrics_and_slots_labelled_by_model(dx: DXServer) -> None:
    text = ready(dx)
    engine = [(n, lab) for n, lab, _ in samples(text) if n.startswith("llamacpp:")]
    assert {n for n, _ in engine} >= {"llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                                      "llamacpp:requests_processing", "llamacpp:n_decode_total"}
    assert all(lab.get("model") == MODEL for _, lab in engine)
    assert value(text, "dx_engine_slots", model=MODEL) == 4  # --parallel 4
    assert value(text, "dx_engine_kv_capacity_tokens", model=MODEL) == 4 * CTX
    assert value(text, "dx_engine_up", model=MODEL, purpose="generate") == 1
    assert value(text, "dx_models_loaded") >= 1
    assert value(text, "dx_engine_starts_total", model=MODEL, purpose="generate") >= 1
    assert value(text, "dx_model_verifications_total") >= 1
    assert 5e6 < value(text, "dx_resident_memory_bytes") < 200e6


@pytest.mark.integration
def test_an_engine_that_does_not_answer_is_skipped_and_counted(dx: DXServer) -> None:
    ready(dx)
    [pid] = dx.children()
    os.kill(pid, signal.SIGSTOP)  # alive, holding its port, answering nothing
    try:
        t0 = time.monotonic()
        status, _, text = scrape(dx)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 200
    assert took < metrics.ENGINE_TIMEOUT * 2 + 10  # bounded by dx's engine timeouts (a silent engine: no answer in 30 s)
    assert not [n for n, _, _ in samples(text) if n.startswith("llamacpp:")]
    assert value(text, "dx_engine_scrape_failures_total", model=MODEL) >= 1
    assert value(text, "dx_engine_up", model=MODEL, purpose="generate") == 1
    back = samples(ready(dx))  # back in the next scrape once it runs again
    assert any(n == "llamacpp:n_decode_total" and lab == {"model": MODEL} for n, lab, _ in back)


@pytest.mark.integration
def test_unload_and_reload_counted(dx: DXServer) -> None:
    before = ready(dx)
    oll = dx.ollama(timeout=120)
    oll.generate(model=MODEL, keep_alive=0)  # Ollama's unload
    assert wait_for(lambda: value(scrape(dx)[2], "dx_models_loaded") == 0, 30)
    oll.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})
    after = scrape(dx)[2]
    assert value(after, "dx_engine_unloads_total", model=MODEL, reason="requested") == \
        value(before, "dx_engine_unloads_total", model=MODEL, reason="requested") + 1
    assert value(after, "dx_engine_starts_total", model=MODEL, purpose="generate") == \
        value(before, "dx_engine_starts_total", model=MODEL, purpose="generate") + 1
