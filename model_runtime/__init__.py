"""DreamLite inference runtime: the exact DreamLite-mobile pipeline over torch, ONNX Runtime and QNN backends.

Usable from a notebook, the exporter or the server; it never imports the server, reads no environment
variables, and imports its frameworks lazily (only the chosen backend loads torch or onnxruntime).
"""

from model_runtime.cache import FeatureCache, LRUFeatureCache
from model_runtime.dtypes import DTYPES, DType
from model_runtime.errors import (
    BackendUnavailableError,
    CanceledError,
    InferenceError,
    InvalidInputError,
    ModelLoadError,
    ModelRuntimeError,
)
from model_runtime.folder import FolderConfig, ModelFolder, open_model_folder
from model_runtime.pipeline import Pipeline, load_pipeline
from model_runtime.types import (
    NOISE_SOURCES,
    TASKS,
    BatchKey,
    NoiseSource,
    Recipe,
    SampleResult,
    SampleSpec,
    StepEvent,
    Trace,
)

__version__ = "0.1.0"

__all__ = [
    "DTYPES",
    "NOISE_SOURCES",
    "TASKS",
    "BackendUnavailableError",
    "BatchKey",
    "CanceledError",
    "DType",
    "FeatureCache",
    "FolderConfig",
    "InferenceError",
    "InvalidInputError",
    "LRUFeatureCache",
    "ModelFolder",
    "ModelLoadError",
    "ModelRuntimeError",
    "NoiseSource",
    "Pipeline",
    "Recipe",
    "SampleResult",
    "SampleSpec",
    "StepEvent",
    "Trace",
    "load_pipeline",
    "open_model_folder",
]
