"""The plan: recipes and matrix.toml loaded into frozen, validated cells (imports only dxverify)."""
