"""What an idle `dx serve` has loaded: nothing only a rarer request needs (issue #24: idle RSS).

http.client (with ssl/libcrypto and the email package, ~8 MB) loads on the first engine
request; the MCP host and server, the Modelfile parser and urllib.request on the first
request that uses them.
"""

from __future__ import annotations

import email.utils
import json
import random
import subprocess
import sys

from dx.server.wire import http_date

LATER = ("ssl", "http.client", "email", "urllib.request", "concurrent.futures", "dx.mcp", "dx.mcp.toolbox",
         "dx.mcp.server", "dx.mcp.client", "dx.models.create", "dx.models.modelfile", "dx.server.mcp_http",
         "dx.server.ollama_create", "dx.swarm")


def test_the_serve_path_loads_none_of_the_request_only_modules() -> None:
    code = ("import sys, json; import dx.cli, dx.cli.serve, dx.server.app, dx.server.routes; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-X", "utf8", "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "dx.server.transport" in loaded and "dx.server.ollama" in loaded  # the probe did import the server
    assert sorted(m for m in LATER if m in loaded) == []


def test_a_lazy_route_loads_its_module_when_first_asked() -> None:
    code = ("import sys; from dx.server.routes import resolve; h, public = resolve('POST', '/mcp'); "
            "print('before', 'dx.server.mcp_http' in sys.modules)\n"
            "try:\n    h(None)\nexcept Exception:\n    pass\n"
            "print('after', 'dx.server.mcp_http' in sys.modules, h.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["before", "False", "after", "True", "mcp_http.post"]


def test_the_mcp_route_loads_no_logging() -> None:
    """dx serve imports dx.server.mcp_http at the first /mcp request, maybe while another thread forks an
    engine: an import of logging then (its at-fork hooks registered mid-fork) made CPython print
    "cannot release un-acquired lock" to dx's stderr (a fresh run of test_mcp_server caught it)."""
    code = "import sys; import dx.server.mcp_http; print('logging' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


def test_http_date_is_email_utils_formatdate() -> None:
    rng = random.Random(24)
    for t in [0, 784111777, 951782400, 1700000000, 4102444799] + [rng.randrange(0, 2 ** 32) for _ in range(2000)]:
        assert http_date(t) == email.utils.formatdate(t, usegmt=True), t
