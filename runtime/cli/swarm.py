"""`dx swarm init` and `dx worker`: the commands of DX Swarm (see dx.swarm.head). Imports only click at load."""

from __future__ import annotations

import socket
import sys

import click

secret_option = click.option(
    "--secret", "secret", metavar="FILE", default=None,
    help="The swarm secret file (default: $DX_SWARM_SECRET, else $DX_HOME/swarm/secret.pem). "
         "Never the secret itself on a command line.")


@click.group("swarm")
def swarm_group() -> None:
    """One model across several machines (llama.cpp RPC behind mutual TLS)."""


@swarm_group.command("init")
@secret_option
@click.option("--force", is_flag=True, help="Replace an existing secret (machines with the old one are locked out).")
def swarm_init(secret: str | None, force: bool) -> None:
    """Make the swarm secret (mode 0600). Copy the file to every machine of the swarm."""
    from dx.swarm.head import secret_path, write_secret

    path = write_secret(secret_path(secret), force=force)
    click.echo(f"dx: swarm secret written to {path} (mode 0600)")
    click.echo("dx: copy it to the same place on every worker and the head, e.g. "
               f"scp -p {path} HOST:{path}")


@click.command("worker")
@click.option("--listen", "listen", required=True, metavar="HOST:PORT",
              help="Where heads connect (TLS). rpc-server itself only ever binds 127.0.0.1.")
@secret_option
@click.option("--no-cache", is_flag=True, help="Do not keep received tensors in rpc-server's cache.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for rpc-server.")
@click.option("--status-file", default=None, metavar="FILE", hidden=True,
              help="Write the tunnel's counters here (JSON), for tests and benchmarks.")
def worker_cmd(listen: str, secret: str | None, no_cache: bool, threads: int | None, status_file: str | None) -> None:
    """Lend this machine to a head: rpc-server on loopback, behind an authenticated, encrypted tunnel."""
    import signal
    from pathlib import Path

    from dx.swarm.head import Worker, load_secret, parse_address, secret_path, show_address

    address = parse_address(listen, "--listen")
    sec = load_secret(secret_path(secret))
    worker = Worker(address, sec, cache=not no_cache, threads=threads,
                    status_path=Path(status_file) if status_file else None)

    def _stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    shown = worker.address
    if shown[0] in ("0.0.0.0", "::"):
        shown = (socket.gethostname(), shown[1])
    secret_arg = f" --secret {sec.path}" if secret else ""
    click.echo(f"dx: worker listening on {show_address(worker.address)} (TLS, swarm secret {sec.path}); "
               f"rpc-server on 127.0.0.1:{worker.rpc_port} only")
    click.echo(f"dx: on the head: dx serve MODEL --workers {show_address(shown)}{secret_arg}")
    sys.stdout.flush()
    try:
        worker.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()


COMMANDS = [swarm_group, worker_cmd]
