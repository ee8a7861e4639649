"""The Nuitka onefile runtime bundle: compile (``nuitka``), a foreign arch under qemu (``foreign``), the payload reader."""
