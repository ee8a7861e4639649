"""The model commands of ``dx``: run, list, show, pull, push, rm, cp, create, ps, doctor.

Only click is imported at module level; each command loads what it needs when
it runs, so ``dx --help`` and a minted executable's start stay quick.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from dx import config
from dx.engine import speculative


def _store():  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    return Store()


def human_size(n: int) -> str:
    """Decimal units, as Ollama prints them."""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def human_age(ts: float, now: float | None = None) -> str:
    s = max(0, int((now or time.time()) - ts))
    for unit, div in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= div:
            k = s // div
            return f"{k} {unit}{'s' if k != 1 else ''} ago"
    return "just now"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


host_option = click.option(
    "--host", envvar=config.HOST_ENV, default=None,
    help="A running dx server (host[:port] or URL; DX_HOST). Without it dx run starts the engine itself.",
)


@click.command("run")
@click.argument("model", required=False)
@click.argument("prompt", required=False, nargs=-1)
@host_option
@click.option("--system", default=None, help="A system prompt.")
@click.option("--temperature", type=click.FloatRange(0, 5), default=None, help="Sampling temperature.")
@click.option("--max-tokens", type=click.IntRange(1, 1 << 20), default=None, help="Stop after this many tokens.")
@click.option("--seed", type=int, default=None, help="Sampling seed, for repeatable answers.")
@click.option("--ctx", type=click.IntRange(256, 1 << 20), default=None, help="Context size (engine default 4096).")
@click.option("--mcp", "mcp", default=None, metavar="FILE",
              help="An mcp.json (mcpServers): the model may call its tools; each call is shown and asked first.")
@click.option("--allow-tools", "allow_tools", multiple=True, metavar="SERVER.TOOL,...",
              help="With --mcp: calls that run without asking (server.* for all of a server's tools).")
@click.option("--tool-rounds", default=4, show_default=True, type=click.IntRange(1, 32),
              help="With --mcp: tool rounds per answer.")
@click.option("--tool-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="With --mcp: seconds one tool call may take.")
@click.option("--tool-choice", default=None, type=click.Choice(["auto", "required"]),
              help="With --mcp: the first round's tool_choice (required: the model must call a tool).")
@speculative.options
def run_cmd(
    model: str | None, prompt: tuple[str, ...], host: str | None, system: str | None,
    temperature: float | None, max_tokens: int | None, seed: int | None, ctx: int | None,
    draft: str | None = None, spec: str | None = None, draft_max: int | None = None, draft_min: int | None = None,
    mcp: str | None = None, allow_tools: tuple[str, ...] = (), tool_rounds: int = 4, tool_timeout: float = 30.0,
    tool_choice: str | None = None,
) -> None:
    """Answer PROMPT with MODEL, or chat when no PROMPT is given (piped stdin is read as the prompt).

    MODEL is a store name, a path to a GGUF, or hf:OWNER/REPO/FILE.gguf (pulled on first use).
    In an executable with a model inside, MODEL may be left out: `run "PROMPT"`, or `run` to chat.
    """
    from dx.cli.chat import AgentOptions, Sampling, SpecOptions, run
    from dx.models.embedded import find_embedded, run_arguments

    if model is None:
        if host is None and find_embedded() is None:
            from dxverify.errors import ConfigurationError

            raise ConfigurationError("dx run needs a MODEL", hint='try: dx run MODEL "Why is the sky blue?" '
                                     "(`dx list` shows the models)")
    else:
        model, prompt = run_arguments(model, prompt)  # a minted executable: `run "PROMPT"` uses its model
    run(
        model, " ".join(prompt) if prompt else None, host=host, system=system,
        sampling=Sampling(temperature, max_tokens, seed), ctx=ctx, stdin=sys.stdin, stdout=sys.stdout,
        speculation=SpecOptions(spec, draft, draft_max, draft_min),
        agent=AgentOptions(mcp, tuple(item for v in allow_tools for item in v.replace(",", " ").split()),
                           tool_rounds, tool_timeout, tool_choice) if mcp else None,
    )


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List the models: the one inside this executable, the store's, and Ollama's (read-only)."""
    from dx.models.details import details_or_empty

    listed = _embedded_listing() + [(e, 0, None) for e in _store().list()]
    if as_json:
        click.echo(json.dumps([{**e.to_json(), **({"offset": off} if off else {})} for e, off, _ in listed], indent=1))
        return
    rows = [["NAME", "ID", "SIZE", "QUANT", "MODIFIED", "SOURCE"]]
    for e, offset, length in listed:
        quant = details_or_empty(e.path, offset, length).quantization_level or e.facts.quant or "-"
        source = "ollama (read-only)" if e.source == "ollama" else e.source.split(":", 1)[0]
        rows.append([e.name, e.sha256[:12], human_size(e.size), quant, human_age(e.modified), source])
    click.echo(_table(rows))


def _embedded_listing() -> list[tuple[Any, int, int | None]]:
    """The model inside this executable as (store-like entry, offset, length); none for a plain dx."""
    from dx.models.check import ModelFacts
    from dx.models.details import details_or_empty
    from dx.models.embedded import embedded_modelfile, find_embedded, model_name
    from dx.models.entry import ModelEntry

    em = find_embedded()
    if em is None:
        return []
    d = details_or_empty(em.path, em.offset, em.length)
    facts = ModelFacts(arch=d.family, family=d.family, quant=d.quantization_level, parameter_size=d.parameter_size,
                       parameter_count=d.parameter_count)
    entry = ModelEntry(name=model_name(em), sha256=em.sha256, size=em.length, modified=em.path.stat().st_mtime,
                       path=em.path, source=f"embedded:{em.path}", read_only=True, facts=facts,
                       modelfile=embedded_modelfile(em))  # minted from a Modelfile: `show --modelfile` prints it
    return [(entry, em.offset, em.length)]


@click.command("show")
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, with the GGUF metadata.")
@click.option("--template", is_flag=True, help="Print only the chat template.")
@click.option("--modelfile", "as_modelfile", is_flag=True, help="Print the model's Modelfile (as `ollama show --modelfile`).")
def show_cmd(model: str | None, as_json: bool, template: bool, as_modelfile: bool) -> None:
    """Show a model (a store name, or a GGUF path): architecture, parameters, quantisation, context.

    In an executable with a model inside, MODEL may be left out (it is the embedded one).
    """
    from pathlib import Path

    from dx.models.check import read_facts
    from dx.models.details import details_for
    from dx.models.entry import ModelEntry
    from dx.models.store import ShownModel
    from dx.names import looks_like_path

    embedded = _embedded_listing() if not model or not looks_like_path(model) else []
    if embedded and (not model or _names_embedded(model)):
        e, offset, length = embedded[0]
        facts = read_facts(e.path, offset, length)  # the structure check, as for any model shown
        d = ShownModel(e, facts)
    elif model and looks_like_path(model):
        # A file on disk: verified like any model the engine may load, then shown like a store entry.
        src = _store().resolve(model, pull=False)
        path = Path(src.path)
        facts = read_facts(path)
        entry = ModelEntry(name=path.name, sha256=src.sha256 or "", size=path.stat().st_size,
                           modified=path.stat().st_mtime, path=path, source=f"file:{path}", facts=facts)
        d, offset, length = ShownModel(entry, facts), 0, None
    elif model:
        d, offset, length = _store().show(model), 0, None
    else:
        from dxverify.errors import ConfigurationError

        raise ConfigurationError("dx show needs a MODEL", hint="`dx list` shows the models")
    if as_modelfile:
        click.echo(_modelfile_of(d), nl=False)
        return
    if template:
        click.echo(d.chat_template or "")
        return
    if as_json:
        meta = {k: v for k, v in d.metadata.items() if k != "tokenizer.chat_template"}
        click.echo(json.dumps({**d.entry.to_json(), "facts": d.facts.to_json(), "metadata": meta},
                              indent=1, default=str))
        return
    f, e = d.facts, d.entry
    od = details_for(e.path, offset, length)  # the same family/size/quantisation /api/show gives
    rows = [
        ("name", e.name), ("architecture", f.arch or "-"), ("parameters", od.parameter_size or "-"),
        ("quantization", od.quantization_level or "-"), ("context length", str(f.context_length or "-")),
        ("embedding length", str(f.embedding_length or "-")), ("layers", str(f.block_count or "-")),
        ("chat template", "yes" if f.has_chat_template else "no"), ("size", human_size(e.size)),
        ("sha256", e.sha256), ("source", e.source), ("path", str(e.path)),
    ]
    click.echo("\n".join(f"{k:<18}{v}" for k, v in rows))


def _names_embedded(model: str) -> bool:
    from dx.models.embedded import find_embedded, names_embedded

    em = find_embedded()
    return em is not None and names_embedded(em, model)


@click.command("pull")
@click.argument("model")
@click.option("--name", default=None, help="Store it under this name[:tag] (default: hf.co/OWNER/REPO:FILE).")
@click.option("--sha256", default=None, help="The SHA-256 the file must have.")
@click.option("--insecure", is_flag=True, help="Plain HTTP to the registry in the name (a registry without TLS).")
def pull_cmd(model: str, name: str | None, sha256: str | None, insecure: bool) -> None:
    """Fetch NAME[:TAG] from Ollama's registry (~/.ollama first), hf:OWNER/REPO/FILE.gguf[@REV], or import a GGUF.

    Registry names are Ollama's ([host/][namespace/]model[:tag]; DX_OLLAMA_REGISTRY, DX_OLLAMA_TOKEN);
    hf: files use HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE. Every byte is checked against its digest.
    """

    tty = sys.stderr.isatty()
    drawn = False

    def say(status: str, completed: int | None, total: int | None) -> None:
        nonlocal drawn
        if status == "downloading":
            if tty and completed is not None:
                pct = f"{100 * completed // total:3d}% " if total else ""
                of = f" / {human_size(total)}" if total else ""
                sys.stderr.write(f"\rdownloading {pct}{human_size(completed)}{of}   ")
                sys.stderr.flush()
                drawn = True
            return
        if drawn:
            sys.stderr.write("\n")
            drawn = False
        click.echo(status, err=True)

    entry = _store().pull(model, name=name, sha256=sha256, progress=say, insecure=insecure)
    click.echo(f"{entry.name}  sha256:{entry.sha256}  {human_size(entry.size)}")


@click.command("push")
@click.argument("model")
@click.argument("destination", required=False)
@click.option("--insecure", is_flag=True, help="Plain HTTP to the registry (a registry without TLS).")
def push_cmd(model: str, destination: str | None, insecure: bool) -> None:
    """Push MODEL from the store to an OCI registry as [host/]namespace/model:tag (default: MODEL's own name).

    In Ollama's media types and manifest shape (what `dx pull NAME` reads back). Blobs the registry
    has are not sent again; blobs DX saw in another repository of it are mounted. Prints
    NAME@sha256:<manifest digest>. DX_OLLAMA_REGISTRY sends it to that base URL instead;
    DX_OLLAMA_TOKEN goes to the registry as a bearer token.
    """
    from dx.models.push import push_model

    tty = sys.stderr.isatty()
    drawn = False

    def say(line: dict[str, Any]) -> None:
        nonlocal drawn
        status, total, done = line["status"], line.get("total"), line.get("completed")
        if total is not None:  # a blob's bytes: one redrawn line on a terminal, the finished size otherwise
            if tty and done is not None and total:
                sys.stderr.write(f"\r{status} {100 * done // total:3d}% {human_size(done)} / {human_size(total)}   ")
                sys.stderr.flush()
                drawn = True
            if done == total:
                if drawn:
                    sys.stderr.write("\n")
                    drawn = False
                else:
                    click.echo(f"{status}  {human_size(total or 0)}", err=True)
            return
        if drawn:
            sys.stderr.write("\n")
            drawn = False
        click.echo(status, err=True)

    result = push_model(_store(), model, destination, insecure=insecure, progress=say)
    click.echo(f"{result.pinned}  (sent {result.sent}, mounted {result.mounted}, already there {result.present})")


@click.command("rm")
@click.argument("models", nargs=-1, required=True)
def rm_cmd(models: tuple[str, ...]) -> None:
    """Remove models from the store (their blobs go when no other name uses them)."""
    store = _store()
    for m in models:
        click.echo(f"deleted {store.delete(m).name}")


@click.command("cp")
@click.argument("source")
@click.argument("destination")
def cp_cmd(source: str, destination: str) -> None:
    """Give a model another name (the bytes are shared)."""
    entry = _store().copy(source, destination)
    click.echo(f"copied {source} to {entry.name}")


def _modelfile_of(shown: Any) -> str:
    """``dx show --modelfile``: a created model's Modelfile, else one made of its template and defaults."""
    from dx.models.create import render_record
    from dx.models.defaults import for_source
    from dx.models.source import ModelSource
    from dx.server.ollama_wire import show_modelfile

    e = shown.entry
    if e.modelfile:
        head = ['# Modelfile generated by "dx show"', "# To build a new Modelfile based on this, replace FROM with:",
                f"# FROM {e.name}", ""]
        return "\n".join(head) + "\n" + render_record(e.modelfile)
    from dx.models.adapters import adapter_digests

    src = ModelSource(path=e.path, offset=e.offset, length=e.length, name=e.name, sha256=e.sha256)
    d = for_source(src)
    return show_modelfile(e.name, shown.chat_template or "", d.params, d.system, adapter_digests(src), d.messages)


@click.command("create")
@click.argument("name")
@click.option("-f", "--file", "modelfile", default="Modelfile", show_default=True, metavar="FILE",
              help="The Modelfile (FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE, ADAPTER, DRAFT, LICENSE).")
def create_cmd(name: str, modelfile: str) -> None:
    """Create NAME from a Modelfile: the FROM model's bytes (shared, never copied twice) with its own defaults.

    FROM takes a store name (pulled when missing, as Ollama does), a GGUF path (relative to the Modelfile),
    hf:OWNER/REPO/FILE.gguf or sha256:DIGEST; ADAPTER a LoRA GGUF path or digest; DRAFT a draft GGUF path,
    store name or digest (checked against FROM as --draft is).
    """
    from pathlib import Path

    from dx.models.create import as_base, base_defaults, blob_entry, create, spec_from_modelfile
    from dx.models.modelfile import parse
    from dx.names import parse_name
    from dxverify.errors import ConfigurationError

    parse_name(name)
    path = Path(modelfile).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"no Modelfile at {path}", hint="write one (FROM MODEL, SYSTEM …) or pass -f FILE")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"cannot read the Modelfile {path}: {e}") from None
    mf = parse(text)
    for w in mf.warnings:
        click.echo(f"warning: {w}", err=True)

    def say(status: str) -> None:
        click.echo(status, err=True)

    store, folder = _store(), path.resolve().parent
    from_ = mf.from_
    blob = _file_blob(store, from_, folder, "FROM", say)
    if blob is not None or from_.startswith(("sha256:", "sha256-")):
        from_ = blob or "sha256:" + from_[7:].lower()
        base = blob_entry(store, from_, "FROM")
    elif from_.startswith("hf:"):
        base = store.pull(from_, progress=lambda s, c, t: None if s == "downloading" else say(s))
    else:
        try:
            base = store.get(from_)
        except ConfigurationError:
            base = store.pull(from_, progress=lambda s, c, t: None if s == "downloading" else say(s))
    inherited, record, template = base_defaults(base, store)
    adapters = [_blob_digest(store, a, folder, f"Modelfile line {n}: ADAPTER", say)
                for a, n in zip(mf.adapters, mf.adapter_lines, strict=True)]
    draft = _blob_digest(store, mf.draft, folder, "DRAFT", say, names=True) if mf.draft else None
    spec = spec_from_modelfile(name, mf, from_, adapters, draft)
    entry = create(store, spec, as_base(base), inherited, say, base_record=record, base_template=template)
    say("success")
    click.echo(f"created {entry.name} from {from_}")


def _file_blob(store: Any, value: str, folder: Any, what: str, say: Any) -> str | None:
    """A GGUF file FROM/ADAPTER/DRAFT names (relative to the Modelfile): into the store's blobs, its digest.

    None when ``value`` names no file (then it is a model name or a digest)."""
    from pathlib import Path

    from dx.models.check import sha256_of
    from dx.names import looks_like_path
    from dxverify.errors import ConfigurationError

    if value.startswith(("sha256:", "sha256-", "hf:")):
        return None
    p = Path(value).expanduser()
    p = p if p.is_absolute() else folder / p
    if not p.is_file():
        if looks_like_path(value):
            raise ConfigurationError(f"{what} {value}: no such file (a path is relative to the Modelfile's folder)")
        return None
    say(f"reading {p.name}")
    digest = "sha256:" + sha256_of(p)
    if store.blob_path(digest) is None:
        say(f"copying {p.name} into the store")
        with open(p, "rb") as f:
            store.receive_blob(iter(lambda: f.read(1 << 20), b""), digest, p.stat().st_size)
    return digest


def _blob_digest(store: Any, value: str, folder: Any, what: str, say: Any, names: bool = False) -> str:
    """ADAPTER/DRAFT -> a blob digest of the store: a file (copied in), a digest, or (DRAFT) a store model."""
    from dxverify.errors import ConfigurationError

    got = _file_blob(store, value, folder, what, say)
    if got is not None:
        return got
    if value.startswith(("sha256:", "sha256-")):
        return "sha256:" + value[7:].lower()
    if names:
        entry = store.get(value)
        if entry.in_place or entry.read_only:
            raise ConfigurationError(f"{what} {value}: its bytes are not a blob of DX's store",
                                     hint=f"dx pull {value} (or give the GGUF's path)")
        return entry.digest
    raise ConfigurationError(f"{what} {value}: no such file", hint="give the LoRA GGUF's path or sha256:DIGEST")


def speculation_summary(spec: dict[str, Any]) -> str:
    """One line for /api/ps's ``dx_speculation``: on or off, and the measurement behind ``--spec auto``."""
    state = "on" if spec.get("speculating") else "off"
    if spec.get("mode") != "auto":
        return f"{state} (forced)"
    if not spec.get("decode_tps_off"):  # not measured (an engine that did not start or answer): say why
        return f"{state} (auto: {spec.get('reason') or 'not measured'}, {spec.get('measured_at', '?')})"
    acc = spec.get("acceptance")
    acc_text = f", acceptance {float(acc):.2f}" if isinstance(acc, (int, float)) else ""
    return (f"{state} (auto: {float(spec.get('ratio') or 0):.2f}x of plain decoding, "
            f"{float(spec.get('decode_tps_on') or 0):.1f} vs {float(spec.get('decode_tps_off') or 0):.1f} tok/s"
            f"{acc_text}, measured {spec.get('measured_at', '?')})")


@click.command("ps")
@host_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ps_cmd(host: str | None, as_json: bool) -> None:
    """List the models a running dx server has loaded."""
    import urllib.error
    import urllib.request

    from dx.cli.chat import ServerError, _error_text, _key_from_home, normalize_host

    base = normalize_host(host or "127.0.0.1")
    key = config.api_key_env() or _key_from_home()
    req = urllib.request.Request(f"{base}/api/ps", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise ServerError(f"{base}/api/ps answered HTTP {e.code}: {_error_text(e.read())}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ServerError(f"no dx server at {base}: {getattr(e, 'reason', e)}",
                          hint="start one with `dx serve`, or point --host/DX_HOST at it") from None
    models = doc.get("models") or []
    if as_json:
        click.echo(json.dumps(models, indent=1))
        return
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]]
    for m in models:
        vram = m.get("size_vram") or 0
        rows.append([str(m.get("name", "")), str(m.get("digest", ""))[:12], human_size(int(m.get("size") or 0)),
                     "100% GPU" if vram and vram >= (m.get("size") or 0) else "100% CPU",
                     str(m.get("expires_at") or "-")])
        spec = m.get("dx_speculation")
        if isinstance(spec, dict):  # dx serve with a draft: what speculates, and (--spec auto) why
            rows.append(["  speculation", speculation_summary(spec), "", "", ""])
        for w in m.get("dx_workers") or []:  # dx serve --workers: the layers each machine holds
            rows.append([f"  {w.get('worker')}", "", f"{float(w.get('model_mib') or 0):.0f} MiB",
                         f"{w.get('layers')} layers", ""])
    click.echo(_table(rows))


@click.command("doctor")
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_cmd(model: str | None, as_json: bool) -> None:
    """What this machine has, which tier it should run, and (with MODEL) how the model would fit.

    In an executable with a model inside, that model is the one planned for when MODEL is left out.
    """
    from dx.cli.doctor import cuda_runtime, plan_model, report_json, report_text
    from dx.host.hardware import detect
    from dx.host.tiers import pick_tier

    hw = detect()
    tier = pick_tier(hw)
    plan = None
    from dx.models.embedded import find_embedded, resolve

    if model or find_embedded() is not None:
        from pathlib import Path

        from dx.models.check import read_facts

        src = resolve(model, pull=False, verify=False)  # no MODEL in an executable: the one inside it
        plan = plan_model(hw, tier, src.display_name, src.size(), read_facts(Path(src.path), src.offset, src.length))
    if as_json:
        click.echo(json.dumps(report_json(hw, tier, plan, cuda_runtime()), indent=1))
    else:
        click.echo(report_text(hw, tier, plan, cuda_runtime()))


COMMANDS = [run_cmd, list_cmd, show_cmd, pull_cmd, rm_cmd, cp_cmd, ps_cmd, doctor_cmd]
