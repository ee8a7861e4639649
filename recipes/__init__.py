"""DX's recipes as package data: engine.toml, tiers.toml, models.toml, patches/ and schema/ (read via ``dxmatrix.resources``)."""
