"""Stage ① HTTP layer: wire types, validation, media and the FastAPI routers."""
