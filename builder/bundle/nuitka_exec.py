"""Nuitka user plugin (``--user-plugin``): the onefile bootstrap becomes the program (exec), not its waiting parent.

Nuitka's onefile bootstrap on Linux unpacks (or, in ``cached`` mode, checks) the
payload, then forks, execs the unpacked ``dx.bin`` in the child and waits in the
parent: for a server's whole life a second process of ~22 MB (the mmapped onefile
it has just read) does nothing but forward signals and hand back the exit code.
Nuitka has no option for it (its own comment: "on Linux maybe exec can be used so
this process [need not] exist anymore if there is nothing to do"). The parent is
needed only to delete a temporary unpack folder at exit; DX unpacks to a
persistent cache folder (``--onefile-cache-mode=cached``), so the bootstrap may
exec ``dx.bin`` in its own place: one process, the same PID the shell, systemd or
a test started, which receives every signal itself and exits with its own status.

This plugin edits the build's own copy of ``OnefileBootstrap.c`` (Nuitka copies it
into the build folder before calling ``onGeneratedSourceCode``; the installed
package is never touched): on Linux, in cached mode only, ``fork()`` becomes "I am
the child", so the bootstrap runs the child's branch (argv[0] = the onefile's path,
``execv`` of the unpacked binary). ``NUITKA_ONEFILE_PARENT`` is unset first: with no
parent to watch, the compiled program starts no parent-monitoring thread. The
anchor is Nuitka 4.3.3's exact text (DX pins it); a bootstrap that does not hold it
stops the build instead of shipping an unpatched one.
"""

from __future__ import annotations

import os

from nuitka.plugins.PluginBase import NuitkaPluginBase

BOOTSTRAP = "OnefileBootstrap.c"
ANCHOR = "    pid_t pid = fork();\n"
REPLACEMENT = """\
#if defined(__linux__) && !_NUITKA_ONEFILE_TEMP_BOOL
    /* dx (builder/bundle/nuitka_exec.py): a cached unpack folder needs no parent to clean it up,
       so exec the program in this process instead of forking and waiting for it. */
    unsetEnvironmentVariable("NUITKA_ONEFILE_PARENT");
    pid_t pid = 0;
#else
    pid_t pid = fork();
#endif
"""
MARK = "builder/bundle/nuitka_exec.py"


def patch_bootstrap(source: str) -> str:
    """``OnefileBootstrap.c`` with the fork replaced by an in-place exec (cached mode, Linux).

    Raises ValueError when the anchor is not there exactly once (another Nuitka): a silent
    no-op would ship the two-process bootstrap again.
    """
    if MARK in source:
        return source
    if source.count(ANCHOR) != 1:
        raise ValueError(f"{BOOTSTRAP}: expected the line {ANCHOR.strip()!r} once, "
                         f"found it {source.count(ANCHOR)} times (not the Nuitka DX pins?)")
    return source.replace(ANCHOR, REPLACEMENT)


class DXExec(NuitkaPluginBase):
    plugin_name = "dx-exec"
    plugin_desc = "The onefile bootstrap execs the cached program instead of waiting for it (one process)."

    def onGeneratedSourceCode(self, source_dir: str, onefile: bool) -> None:
        if not onefile:
            return
        path = os.path.join(source_dir, "static_src", BOOTSTRAP)
        with open(path, encoding="utf-8") as f:
            source = f.read()
        try:
            patched = patch_bootstrap(source)
        except ValueError as exc:
            self.sysexit(str(exc))
        # The copy may be a hard link to the installed package's file (Nuitka's cheap copy):
        # write a new file in its place, never into the shared one.
        os.unlink(path)
        with open(path, "w", encoding="utf-8") as f:
            f.write(patched)
        self.info("onefile bootstrap: exec in place of fork + wait (cached mode)")
