"""The pipeline's steps: one module each, with ``name`` and ``run(ctx)`` (see dxbuild.pipeline)."""
