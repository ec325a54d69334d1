"""sq_keras: cheap l-inf robust image classifiers with a soft-quantization input layer.

`sq_keras.RobustModel` trains your own Keras classifier robustly with
`compile()` + `fit()`; `sq_keras.callbacks` anneals its quantizer and logs its
input gradient. Both load on first use, so that importing one part of the
package (`sq_keras.layers`, `sq_keras.attacks`, ...) does not import the
others; the first use of `sq_keras.RobustModel` (or `from sq_keras import
RobustModel`) also registers it for `keras.models.load_model`.
"""

import importlib

__version__ = "0.1.0"

# Public name -> (module, attribute in it; None for the module itself).
_LAZY_EXPORTS = {
    "RobustModel": ("sq_keras.robust_model", "RobustModel"),
    "callbacks": ("sq_keras.callbacks", None),
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name):
    if name not in _LAZY_EXPORTS:
        raise AttributeError(f"module 'sq_keras' has no attribute {name!r}")
    module_name, attribute = _LAZY_EXPORTS[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_LAZY_EXPORTS})
