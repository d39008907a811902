"""Stage ① command line: ``dreamlite serve`` (uvicorn over :func:`server.app.create_app`).

Flags override the ``DREAMLITE_*`` environment defaults; uvicorn and FastAPI are imported only when the
command runs, so ``dreamlite --help`` stays light.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add ``serve`` to the ``dreamlite`` sub-command parser."""
    serve = sub.add_parser("serve", help="run the HTTP/WebSocket server (uvicorn)")
    serve.add_argument("--model", metavar="DIR", help="DreamLite folder; default: the embedded model")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1 or DREAMLITE_HOST)")
    serve.add_argument("--port", type=int, default=None, help="bind port (default 8000 or DREAMLITE_PORT)")
    serve.add_argument("--backend", choices=["torch", "onnx", "qnn"], default=None, help="runtime backend")
    serve.add_argument("--bundle", metavar="DIR", default=None, help="device bundle (onnx and qnn backends)")
    serve.add_argument("--target", default=None, help="QNN target SoC, e.g. sm8650")
    serve.add_argument("--precision", default=None, help="bundle graph precision (onnx): fp32, fp16, w8a16")
    serve.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:N")
    serve.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    serve.add_argument("--max-batch-size", type=int, default=None, help="most images per UNet batch")
    serve.add_argument("--max-wait-ms", type=float, default=None, help="longest wait for a fuller batch")
    serve.add_argument("--no-batching", action="store_true", help="run every image alone (batch size 1)")
    serve.set_defaults(handler=run_serve)


def settings_from_args(args: argparse.Namespace) -> Any:
    """``ServerSettings`` from the environment, with the given flags on top."""
    from server.settings import ServerSettings

    base = ServerSettings()
    data = base.model_dump()
    model = data["model"]
    for flag, key in (
        ("model", "dir"),
        ("backend", "backend"),
        ("bundle", "bundle"),
        ("target", "target"),
        ("precision", "precision"),
        ("device", "device"),
        ("dtype", "dtype"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            model[key] = value
    if args.host is not None:
        data["host"] = args.host
    if args.port is not None:
        data["port"] = args.port
    if args.max_batch_size is not None:
        data["batching"]["max_batch_size"] = args.max_batch_size
    if args.max_wait_ms is not None:
        data["batching"]["max_wait_ms"] = args.max_wait_ms
    if args.no_batching:
        data["batching"]["enabled"] = False
    data["auth"]["api_keys"] = [k.get_secret_value() for k in base.auth.api_keys]
    return ServerSettings.model_validate(data)


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``dreamlite serve``: fail fast on a bad configuration, else run uvicorn until stopped."""
    import importlib.util

    import uvicorn
    from pydantic import ValidationError

    from model_runtime.errors import BackendUnavailableError, InvalidInputError, ModelLoadError
    from server.app import create_app
    from server.log_setup import configure_logging

    try:
        settings = settings_from_args(args)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise InvalidInputError(field, str(first.get("msg", "is invalid")) + ".") from err
    configure_logging(settings.log_level, settings.log_format)
    backend = settings.model.backend
    if backend == "torch" and settings.model.dir is None:
        from model_runtime.assets import default_model_dir

        default_model_dir()  # fail fast with the actionable message when the embedded model is absent
    if importlib.util.find_spec(f"model_runtime.backends.{backend}_backend") is None:
        raise BackendUnavailableError(
            f"the {backend} backend is not part of this build yet; use --backend torch"
        )
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(err: BaseException) -> None:
        failures.append(err)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, ws="websockets")
    server = uvicorn.Server(config)
    server.run()
    if failures:
        failure = failures[0]
        if isinstance(failure, ModelLoadError | BackendUnavailableError | InvalidInputError):
            raise failure
        source = str(settings.model.dir or settings.model.bundle)
        raise ModelLoadError(source, f"cannot be loaded: {failure}") from failure
    return 0
