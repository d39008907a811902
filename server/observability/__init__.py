"""Stage ⑧ observability: Prometheus metrics and tracing helpers."""
