"""DreamLite inference server: FastAPI over one dynamic-batching engine that owns the model.

Layers (imports only point down): ``api`` (wire types, validation, routes) → ``engine`` (admission,
batcher, runner on one runtime thread) → ``model_runtime``; ``scaleout`` holds the job broker behind the
``JobBroker`` interface; ``observability`` holds metrics and tracing; ``app`` is the composition root.
"""

__version__ = "0.1.0"
