"""What a user sees when the machine, not DX, is the problem: one line and the fix, never 'internal error'."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request

import click
import pytest

from dxverify.cli_errors import run_cli


def _cli(exc: BaseException) -> click.Command:
    @click.command()
    def boom() -> None:
        raise exc

    return boom


def _run(exc: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run_cli(_cli(exc), "dxbuild", [])
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return code, err


def test_missing_module_names_the_pip_command(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import dx_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    except ModuleNotFoundError as e:
        code, err = _run(e, capsys)
    assert code == 7
    assert "'dx_no_such_module' is not installed" in err and "pip install dx_no_such_module" in err
    assert "internal error" not in err


def test_missing_module_maps_import_name_to_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(ModuleNotFoundError("No module named 'yaml'", name="yaml"), capsys)
    assert code == 7 and "pip install pyyaml" in err


class ConnectError(Exception):
    """Named like httpx's: DX must recognise it without importing httpx."""


def test_name_resolution_failure_is_a_network_problem(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        socket.getaddrinfo("no-such-host.invalid", 443)
    except socket.gaierror as gai:
        try:
            raise ConnectError(str(gai)) from gai
        except ConnectError as e:
            code, err = _run(e, capsys)
    assert code == 7
    assert err.startswith("dxbuild: error: network unreachable") and "HF_ENDPOINT" in err


def test_refused_connection_through_urllib(capsys: pytest.CaptureFixture[str]) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=5)
    except urllib.error.URLError as e:
        code, err = _run(e, capsys)
    assert code == 7 and "network unreachable" in err


def test_full_disk_and_permission(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(OSError(errno.ENOSPC, "No space left on device", "/out/dx-x"), capsys)
    assert code == 7 and "no space left on the device writing /out/dx-x" in err and "DX_CACHE_DIR" in err
    code, err = _run(PermissionError(errno.EACCES, "Permission denied", "/root/.cache/dx"), capsys)
    assert code == 7 and "Permission denied: /root/.cache/dx" in err


def test_missing_program(capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess

    try:
        subprocess.run(["dx-no-such-program"], check=False)
    except FileNotFoundError as e:
        code, err = _run(e, capsys)
    assert code == 7 and "'dx-no-such-program' was not found" in err and "program of that name on PATH" in err


def test_a_real_bug_is_still_an_internal_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(ValueError("boom"), capsys)
    assert code == 70 and "internal error: ValueError: boom" in err and "--debug" in err


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(ModuleNotFoundError):
        run_cli(_cli(ModuleNotFoundError("No module named 'x'", name="x")), "dxbuild", ["--debug"])
