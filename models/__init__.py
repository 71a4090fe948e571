"""Model plug-ins: spec files, pure pre/post-processing, backends, and the default model.

Importing this package is cheap: TensorFlow and Keras are imported only when a model is loaded
or built. Typical use on worker start, then per batch::

    spec = load_spec(settings.model_spec)
    classifier = load_classifier(spec)          # once, in a thread
    pixels = fit_to_input(image, spec.input_size, spec.resize)   # decode stage
    classifier.predict(np.stack(batch))         # classify stage: one call per batch
"""

from .backends import Classifier, ModelLoadError, load_classifier
from .efficientnet_lite import build_default_model, imagenet_labels
from .preprocess import TopK, fit_to_input, interpret, normalize, top_k
from .spec import ModelError, ModelSpec, ModelSpecError, load_spec
from .torch_pickle import load_legacy_state_dict

__all__ = [
    "Classifier",
    "ModelError",
    "ModelLoadError",
    "ModelSpec",
    "ModelSpecError",
    "TopK",
    "build_default_model",
    "fit_to_input",
    "imagenet_labels",
    "interpret",
    "load_classifier",
    "load_legacy_state_dict",
    "load_spec",
    "normalize",
    "top_k",
]
