"""Render and write the build reports (size, bench): JSON for tools, Markdown and SVG for people.

Templates live in ``ci/reports/`` and use the same ``[[ ]]`` / ``[% %]``
delimiters as every DX template, so a template reads like its output. Charts
are plain SVG drawn by the template — no plotting dependency. Every file is
written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import jinja2

from dxbuild.atomic import write_text_atomic
from dxbuild.paths import ci_dir

REPORT_FORMAT = 1


class _QuietBytecodeCache(jinja2.FileSystemBytecodeCache):
    """A read-only or full cache still renders; the template is then compiled again next time."""

    def dump_bytecode(self, bucket: Any) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates kept in the DX cache: compiling the two size-report templates is most of
    that step's time in a mint (jinja2 checks each entry against its template's source)."""
    from dxbuild.paths import cache_dir

    folder = cache_dir() / "jinja"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return _QuietBytecodeCache(str(folder))


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ci_dir() / "reports")),
        bytecode_cache=_bytecode_cache(),
        variable_start_string="[[", variable_end_string="]]",
        block_start_string="[%", block_end_string="%]",
        comment_start_string="[#", comment_end_string="#]",
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    env.filters["mb"] = lambda n: f"{(n or 0) / 1e6:.1f}"
    env.filters["xml"] = lambda s: (str(s).replace("&", "&amp;").replace("<", "&lt;")
                                    .replace(">", "&gt;").replace('"', "&quot;"))
    return env


def render(template: str, **values: Any) -> str:
    return _env().get_template(template).render(**values)


def write_report(out_dir: Path, stem: str, doc: dict[str, Any]) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` (from ``<stem>.md.j2``) and ``<stem>.svg``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.svg"]
    write_text_atomic(paths[0], json.dumps(doc, indent=2, sort_keys=True) + "\n")
    write_text_atomic(paths[1], render(f"{stem}.md.j2", r=doc))
    write_text_atomic(paths[2], render(f"{stem}.svg.j2", r=doc))
    return paths


def load_report(path: Path, kind: str) -> dict[str, Any]:
    """A previous report given with --previous-size-report / --baseline; one clear line if it is not one."""
    from dxverify.errors import ConfigurationError

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"{path} cannot be read as a {kind} report: {e}") from e
    if not isinstance(doc, dict) or doc.get("report") != kind or doc.get("format") != REPORT_FORMAT:
        raise ConfigurationError(f"{path} is not a DX {kind} report (format {REPORT_FORMAT})")
    return doc
