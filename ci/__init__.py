"""DX's ci/ as package data: Jinja2 templates (workflows, install.sh, reports), JSON schemas, the pinned sigstore root."""
