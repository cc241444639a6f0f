"""edgehydra: put a trained HydraNet (joint segmentation + depth) on edge devices.

Importing this package loads torch and the model only: export backends (executorch,
coremltools, litert-torch, onnxruntime) are imported lazily by the stage that needs them.
"""
__version__ = "0.1.0"

from .model import HydraConfig, HydraNet, normalize  # noqa: E402
from .registry import create_model, list_models, model_config  # noqa: E402

__all__ = ["HydraConfig", "HydraNet", "normalize", "create_model", "list_models", "model_config", "__version__"]
