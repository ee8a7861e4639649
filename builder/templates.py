"""The Jinja2 environment for everything rendered from ``ci/``.

Shell and GitHub Actions both use ``{{ }}`` and ``{#`` themselves (``${{ github.sha }}``,
``${#var}``), so DX's templates use ``[[ value ]]``, ``[% block %]`` and ``[# comment #]``:
nothing in the rendered text needs escaping, and a template reads like its output.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from dxbuild.atomic import write_text_atomic
from dxbuild.paths import ci_dir


def templates_dir() -> Path:
    return ci_dir()


def sh_quote(value: object) -> str:
    """One single-quoted POSIX sh word holding ``value`` exactly."""
    return "'" + str(value).replace("'", "'\\''") + "'"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string="[%",
        block_end_string="%]",
        comment_start_string="[#",
        comment_end_string="#]",
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["sh_quote"] = sh_quote
    return env


def render(template: str, **values: object) -> str:
    return environment().get_template(template).render(**values)


write_atomically = write_text_atomic  # rendered files: workflows, install.sh
