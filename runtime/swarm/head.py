"""DX Swarm: one model across machines on llama.cpp's RPC backend, behind mutual TLS.

* The swarm secret (``dx swarm init``) is one PEM file, mode 0600: the swarm
  certificate, the private swarm CA's certificate that signed it, and the swarm
  certificate's key. The CA's key is thrown away after signing, so no second
  certificate can ever chain to this CA: holding the file *is* membership.
* Every connection between machines is TLS 1.3 with certificates on both sides
  (``CERT_REQUIRED``), verified against the swarm CA, and the peer's certificate
  must be the swarm's own (SAN ``dx-swarm.invalid``, same bytes). No host names.
* ``rpc-server`` binds 127.0.0.1 only; see :mod:`dx.swarm.tunnel` for what reaches it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dx import config
from dx.config import dx_home
from dx.engine.launcher import _free_loopback_port, _pdeathsig_preexec, _tail, default_log_dir
from dx.engine.locate import _cache_dir, locate_engine, locate_rpc_server
from dx.engine.process import GENERATE
from dx.swarm.tunnel import HeadTunnel, PeerRejected, WorkerTunnel, open_to_worker
from dxverify.errors import ConfigurationError, EnvironmentProblem, ToolError

IDENTITY = "dx-swarm.invalid"  # the fixed name in the swarm certificate (a reserved TLD: never a real host)
SECRET_ENV = config.SWARM_SECRET_ENV
_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.S)
VALID_DAYS = 3650


# --------------------------------------------------------------------------- the secret file
def default_secret_path() -> Path:
    return dx_home() / "swarm" / "secret.pem"


def secret_path(option: str | None) -> Path:
    """``--secret FILE``, else ``$DX_SWARM_SECRET`` (a path), else ``$DX_HOME/swarm/secret.pem``."""
    value = option or config.swarm_secret_env()
    return Path(value).expanduser() if value else default_secret_path()


def _generate_with_cryptography() -> tuple[bytes, bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    until = now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DX swarm CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dx-swarm")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(IDENTITY)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return leaf.public_bytes(pem), ca.public_bytes(pem), key_pem


def _generate_with_openssl(openssl: str) -> tuple[bytes, bytes, bytes]:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    with tempfile.TemporaryDirectory(prefix="dx-swarm-") as tmp:  # mode 0700; the CA key dies with it
        d = Path(tmp)
        (d / "leaf.ext").write_text(
            f"subjectAltName=DNS:{IDENTITY}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            "authorityKeyIdentifier=keyid\n")
        steps = [
            [openssl, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(VALID_DAYS),
             "-subj", "/CN=DX swarm CA", "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            [openssl, "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=dx-swarm"],
            [openssl, "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", "0x" + os.urandom(16).hex(), "-days", str(VALID_DAYS), "-sha256",
             "-extfile", "leaf.ext", "-out", "leaf.pem"],
            [openssl, "pkey", "-in", "leaf.key", "-out", "leaf.p8"],
        ]
        for argv in steps:
            res = subprocess.run(argv, cwd=d, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
            if res.returncode:
                raise ToolError(f"openssl failed making the swarm secret: {res.stderr.strip()[-300:]}")
        return (d / "leaf.pem").read_bytes(), (d / "ca.pem").read_bytes(), (d / "leaf.p8").read_bytes()


def generate_secret() -> tuple[bytes, bytes, bytes]:
    """(swarm certificate, CA certificate, swarm key) as PEM: with `cryptography`, else the `openssl` CLI."""
    try:
        return _generate_with_cryptography()
    except ImportError:
        pass
    openssl = shutil.which("openssl")
    if openssl is None:
        raise EnvironmentProblem(
            "cannot make a swarm secret: neither the Python package `cryptography` nor the `openssl` program is here",
            hint="pip install cryptography, or install openssl (apt-get install openssl), or run "
                 "`dx swarm init` on another machine and copy the file",
        )
    return _generate_with_openssl(openssl)


def write_secret(path: Path, *, force: bool = False) -> Path:
    if path.exists() and not force:
        raise ConfigurationError(f"{path} already exists (a swarm secret)",
                                 hint="copy it to the other machines, or pass --force to make a new swarm")
    leaf, ca, key = generate_secret()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        # order matters to ssl.load_cert_chain: the certificate first, then its chain, then the key
        fh.write(b"# DX swarm secret: whoever holds this file can join the swarm. Keep it mode 0600.\n")
        fh.write(leaf + ca + key)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Secret:
    path: Path
    cert_der: bytes
    ca_pem: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        return self._common(ctx)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # workers are found by address; the identity check is dx.swarm.tunnel.check_peer
        return self._common(ctx)

    def _common(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.ca_pem)
        ctx.load_cert_chain(str(self.path))
        return ctx


def load_secret(path: Path) -> Secret:
    """Read and check the secret file: it exists, only its owner can read it, it holds what init wrote."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"no swarm secret at {path}",
                                 hint="run `dx swarm init` once, then copy the file to every machine "
                                      "(mode 0600; or point --secret / DX_SWARM_SECRET at it)") from None
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
                                 hint=f"chmod 600 {path}")
    blocks = [(m.group(1).decode(), m.group(0)) for m in _PEM.finditer(data)]
    certs = [b for kind, b in blocks if kind == "CERTIFICATE"]
    if len(certs) != 2 or not any(kind.endswith("PRIVATE KEY") for kind, _ in blocks):
        raise ConfigurationError(f"{path} is not a DX swarm secret (want two certificates and a key)",
                                 hint="make one with `dx swarm init`")
    secret = Secret(path=path, cert_der=ssl.PEM_cert_to_DER_cert(certs[0].decode()), ca_pem=certs[1].decode())
    try:
        secret.server_context()
    except ssl.SSLError as exc:
        raise ConfigurationError(f"{path}: the swarm secret does not load ({exc.reason or exc})",
                                 hint="make a new one with `dx swarm init --force`") from None
    return secret


# --------------------------------------------------------------------------- addresses and engine facts
def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT``."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", text.strip())
    if not m:
        raise ConfigurationError(f"{what} {text!r} is not HOST:PORT", hint="e.g. 192.168.1.20:50052")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 <= int(port) < 65536:  # 0: any free port (a worker's --listen)
        raise ConfigurationError(f"{what} {text!r}: port out of range")
    return host, int(port)


def show_address(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def engine_facts(engine_bin: Path) -> dict[str, str]:
    """What a worker tells a head: the llama.cpp build its RPC speaks (from engine.json beside bin/)."""
    facts = {"dx_swarm": "1"}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((engine_bin.parent.parent / "engine.json").read_text())
        facts["llama_cpp"] = str(info.get("llama_cpp_commit") or "")
        facts["tier"] = str(info.get("tier") or "")
    return facts


# --------------------------------------------------------------------------- worker
def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? Read from /proc, so no probe connection reaches rpc-server."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as fh:
            return any(f" {want} " in line and line.split()[3] == "0A" for line in fh)
    except OSError:
        return True  # no /proc: trust the process being alive


def upstream_connections(port: int) -> int:
    """Established TCP connections to 127.0.0.1:port (rpc-server's side), from /proc/net/tcp."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as fh:
            return sum(1 for line in fh if line.split()[1:2] == [want] and line.split()[3] == "01")
    except OSError:
        return -1


class Worker:
    """`dx worker`: rpc-server on loopback + the TLS tunnel in front of it."""

    def __init__(self, listen: tuple[str, int], secret: Secret, *, cache: bool = True, threads: int | None = None,
                 status_path: Path | None = None) -> None:

        self.listen = listen
        binary = locate_rpc_server()
        self.rpc_port = _free_loopback_port()
        argv = [str(binary), "-H", "127.0.0.1", "-p", str(self.rpc_port)]
        if cache:
            argv.append("-c")
        if threads:
            argv += ["-t", str(threads)]

        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
        env["LLAMA_CACHE"] = str(_cache_dir() / "rpc-cache")  # rpc-server keeps its tensors under .../rpc
        self.cache_dir = Path(env["LLAMA_CACHE"]) / "rpc"

        log_dir = default_log_dir()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"rpc-server-{listen[1]}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, preexec_fn=_pdeathsig_preexec(), start_new_session=True)
        deadline = time.monotonic() + 30
        while not _listening(self.rpc_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()

                raise ToolError(f"rpc-server did not start: {_tail(self.log_path)}", hint=f"see {self.log_path}")
            time.sleep(0.05)

        def rejected(addr: tuple, why: str) -> None:
            print(f"dx: refused {show_address(addr[:2])}: {why}", file=sys.stderr, flush=True)

        try:
            self.tunnel = WorkerTunnel(listen[0], listen[1], secret.server_context(), secret.cert_der, IDENTITY,
                                       ("127.0.0.1", self.rpc_port), engine_facts(binary), on_reject=rejected)
        except OSError as exc:
            self.stop()
            raise EnvironmentProblem(f"cannot listen on {show_address(listen)}: {exc.strerror or exc}",
                                     hint="pick another --listen port or address") from None
        self.status_path = status_path
        self._last_status = ""

    @property
    def address(self) -> tuple[str, int]:
        return self.tunnel.address

    def status(self) -> dict[str, object]:
        with self.tunnel.lock:
            doc: dict[str, object] = dict(self.tunnel.stats.as_dict())
        doc.update(listen=show_address(self.address), rpc_port=self.rpc_port, rpc_pid=self.process.pid,
                   pid=os.getpid())
        return doc

    def write_status(self) -> None:
        if self.status_path is None:
            return
        text = json.dumps(self.status(), sort_keys=True)
        if text == self._last_status:
            return
        tmp = self.status_path.with_name(self.status_path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, self.status_path)
        self._last_status = text

    def serve_forever(self) -> None:
        while self.process.poll() is None:
            self.write_status()
            time.sleep(0.5)
        self.write_status()

        raise ToolError(f"rpc-server exited with status {self.process.returncode}: {_tail(self.log_path)}",
                        hint=f"see {self.log_path}; start `dx worker` again")

    def stop(self) -> None:
        tunnel = getattr(self, "tunnel", None)
        if tunnel is not None:
            tunnel.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --------------------------------------------------------------------------- head
class Head:
    """`dx serve --workers`: one loopback tunnel end per worker, and the engine arguments that use them."""

    def __init__(self, workers: Sequence[tuple[str, int]], secret: Secret, engine_bin: Path,
                 tensor_split: Sequence[float] | None = None) -> None:

        if tensor_split is not None and len(tensor_split) != len(workers):
            raise ConfigurationError(f"--tensor-split has {len(tensor_split)} values for {len(workers)} workers",
                                     hint="give one proportion per worker, e.g. --tensor-split 1,1")
        if not any(engine_bin.parent.glob("*ggml-rpc.*")):
            raise ConfigurationError(f"the engine at {engine_bin.parent} has no RPC backend (libggml-rpc)",
                                     hint="rebuild it with `dxbuild engine --tier cpu` (GGML_RPC=ON)")
        self.secret = secret
        self.facts = engine_facts(engine_bin)
        self.workers = list(workers)
        self.tensor_split = list(tensor_split) if tensor_split is not None else None
        self._ctx = secret.client_context()
        self.tunnels = [HeadTunnel(w, self._ctx, secret.cert_der, IDENTITY) for w in self.workers]
        self.in_use: list[int] = []  # indexes of the workers the running engine was started with
        self._said: dict[int, str] = {}
        self._lock = threading.Lock()

    def check(self, index: int) -> str | None:
        """None when the worker answers as this swarm's and runs our llama.cpp; else one line saying what to do."""

        name = show_address(self.workers[index])
        try:
            tls, facts = open_to_worker(self.workers[index], self._ctx, self.secret.cert_der, IDENTITY)
        except ssl.SSLError as exc:
            return (f"worker {name} refused the TLS handshake ({exc.reason or exc}): it does not hold this swarm's "
                    f"secret; copy {self.secret.path} to it and restart `dx worker` there")
        except PeerRejected as exc:
            return f"worker {name}: {exc}; copy {self.secret.path} to it and restart `dx worker` there"
        except OSError as exc:
            return (f"worker {name} is unreachable ({exc.strerror or exc}); start `dx worker --listen {name}` "
                    "there, or check the address and firewall")
        with contextlib.suppress(OSError):
            tls.close()
        ours, theirs = self.facts.get("llama_cpp", ""), facts.get("llama_cpp", "")
        if ours and theirs and ours != theirs:
            return (f"worker {name} runs llama.cpp {theirs[:12]}, this head {ours[:12]}: RPC needs the same build; "
                    "run the same dx executable (or engine) on both")
        return None

    def check_all(self) -> None:
        """At start: every worker asked for must be usable, or dx serve stops with the first problem."""
        for i in range(len(self.workers)):
            problem = self.check(i)
            if problem:
                raise ConfigurationError(problem)

    def engine_args(self, purpose: str) -> list[str]:
        """Arguments for an engine (re)start: the workers that answer now. Embedding engines stay local."""

        if purpose != GENERATE:
            return []
        up: list[int] = []
        for i in range(len(self.workers)):
            problem = self.check(i)
            if problem is None:
                up.append(i)
                self._said.pop(i, None)
            elif self._said.get(i) != problem:
                self._said[i] = problem
                print(f"dx: {problem}; serving without it", file=sys.stderr, flush=True)
        with self._lock:
            self.in_use = up
        if not up:
            if self.workers:
                print("dx: no worker answers; serving on this machine alone", file=sys.stderr, flush=True)
            return []
        ends = ",".join(f"127.0.0.1:{self.tunnels[i].address[1]}" for i in up)
        args = ["--rpc", ends, "-lv", "4"]  # -lv 4: the engine logs which device holds which buffers
        if self.tensor_split is not None:
            args += ["--tensor-split", ",".join(f"{self.tensor_split[i]:g}" for i in up)]
        return args

    def worker_for_endpoint(self, endpoint: str) -> str:
        for w, t in zip(self.workers, self.tunnels, strict=True):
            if endpoint == f"127.0.0.1:{t.address[1]}":
                return show_address(w)
        return endpoint

    def close(self) -> None:
        for t in self.tunnels:
            t.close()


_head: Head | None = None


def set_head(head: Head | None) -> None:
    global _head
    _head = head


def current_head() -> Head | None:
    return _head


# --------------------------------------------------------------------------- placement (from the engine log)
_N_LAYER = re.compile(r"print_info: n_layer\s+=\s+(\d+)")
_KV_TOTAL = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*\d+ cells,\s+(\d+) layers")
_KV_DEV = re.compile(r"llama_kv_cache: (\S+?)\[([^\]]+)\] KV buffer size =\s+([\d.]+) MiB")
_MODEL_DEV = re.compile(r"load_tensors: (\S+?)\[([^\]]+)\] model buffer size =\s+([\d.]+) MiB")


def placement_from_log(text: str) -> list[dict[str, object]]:
    """Which RPC endpoint holds how many layers, from llama.cpp's load log (``-lv 4``).

    llama.cpp logs each device's KV-cache buffer; the KV cache is the same size
    per layer, so a device's share of it is its share of the layers.
    """
    kv_total = _KV_TOTAL.findall(text)
    if not kv_total:
        return []
    total_mib, kv_layers = float(kv_total[-1][0]), int(kv_total[-1][1])
    per_layer = total_mib / kv_layers if kv_layers else 0.0
    model = {ep: float(mib) for _dev, ep, mib in _MODEL_DEV.findall(text)}
    out: list[dict[str, object]] = []
    for _dev, endpoint, mib in _KV_DEV.findall(text):
        layers = round(float(mib) / per_layer) if per_layer else 0
        out.append({"endpoint": endpoint, "layers": layers, "model_mib": model.get(endpoint, 0.0)})
    n_layer = _N_LAYER.findall(text)
    if out and n_layer:
        out.append({"endpoint": "local", "layers": max(0, int(n_layer[-1]) - sum(int(p["layers"]) for p in out)),
                    "model_mib": 0.0})
    return out


def engine_placement(log_path: Path) -> list[dict[str, object]]:
    """/api/ps's ``dx_workers``: per worker (named as the user gave it) the layers it holds."""
    head = current_head()
    if head is None:
        return []
    try:
        with open(log_path, "rb") as fh:  # the load lines come first; a long-running log is not read whole
            text = fh.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return []
    rows = placement_from_log(text)
    for row in rows:
        if row["endpoint"] != "local":
            row["worker"] = head.worker_for_endpoint(str(row["endpoint"]))
        else:
            row["worker"] = "head"
        del row["endpoint"]
    return rows


def head_from_options(workers: Sequence[str], tensor_split: str | None, secret: str | None) -> Head | None:
    """`dx serve --workers ...`: load the secret, open the tunnel ends, check every worker; None without workers."""
    if not workers:
        if tensor_split:
            raise ConfigurationError("--tensor-split needs --workers")
        return None

    addresses = [parse_address(w, "--workers entry") for w in workers]
    split = None
    if tensor_split:
        try:
            split = [float(x) for x in tensor_split.replace(",", " ").split()]
        except ValueError:
            raise ConfigurationError(f"--tensor-split {tensor_split!r} is not a list of numbers",
                                     hint="e.g. --tensor-split 3,1") from None
    head = Head(addresses, load_secret(secret_path(secret)), locate_engine(), split)
    try:
        head.check_all()
    except BaseException:
        head.close()
        raise
    # an engine that loses a worker aborts (ggml-rpc); skip the gdb backtrace so it is back at once
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    set_head(head)
    return head
