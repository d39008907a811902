"""Stage ③ scale-out: job brokers behind the ``JobBroker`` interface (in memory now, Redis later)."""
