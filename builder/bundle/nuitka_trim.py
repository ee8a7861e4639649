"""Nuitka user plugin (``--user-plugin``): leave out what the dx runtime never loads.

Nuitka ships every codec of the ``encodings`` package in a standalone build,
because a program may start under any locale and needs that locale's codec to
set up its standard streams. The dx runtime is compiled in UTF-8 mode
(PEP 540; ``dxbuild.bundle.nuitka`` runs Nuitka under ``python -X utf8``, whose mode
the compiled program keeps): its streams and file names are UTF-8 whatever the locale,
so the CJK multibyte codecs (about 1.5 MB of extension modules) are never
needed. Nothing offers a switch for that, so this plugin removes them from the
standalone folder before Nuitka packs it into the onefile. A program that asked
for one of those encodings would get Python's usual ``LookupError``.
"""

from __future__ import annotations

import os

from nuitka.plugins.PluginBase import NuitkaPluginBase

# Extension modules behind the CJK codecs (encodings.cp932, euc_kr, gb2312, big5 …).
DROP = frozenset({
    "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw", "_multibytecodec",
})


class DXTrim(NuitkaPluginBase):
    plugin_name = "dx-trim"
    plugin_desc = "Leave the CJK codec extension modules out of the dx runtime (it runs in UTF-8 mode)."

    def onStandaloneDistributionFinished(self, dist_dir: str) -> None:
        for name in sorted(os.listdir(dist_dir)):
            stem, _, ext = name.partition(".")
            if stem in DROP and ext.endswith(("so", "pyd")):
                os.unlink(os.path.join(dist_dir, name))
                self.info(f"left out {name} (UTF-8 mode needs no CJK codec)")
