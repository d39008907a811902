"""Python client for the DreamLite server (httpx, sync and async; no server or runtime imports)."""
