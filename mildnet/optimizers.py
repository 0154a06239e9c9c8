"""The optimizers a training run may use: :data:`OPTIMIZERS`, the one list of them.

Settings validation (``mildnet.runs``), the training loop (``make_optimizer``) and the CLI's ``--optimizer``
choices all read it. Keras is imported inside the factories, so reading the names (a run's settings,
``python -m mildnet --help``) does not load TensorFlow.
"""

from __future__ import annotations

from typing import Any, Callable


def adam(learning_rate: float, momentum: float) -> Any:
    """Adam; ``momentum`` is not used (Adam keeps its own moments)."""
    import keras

    return keras.optimizers.Adam(learning_rate=learning_rate)


def sgd(learning_rate: float, momentum: float) -> Any:
    """SGD with Nesterov momentum, as the reference trained."""
    import keras

    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=True)


OptimizerFactory = Callable[[float, float], Any]

# name -> factory(learning_rate, momentum) -> a Keras optimizer. The order is the one messages and --help list.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": sgd,
    "adam": adam,
}


def get_optimizer(name: str, learning_rate: float, momentum: float) -> Any:
    """A fresh Keras optimizer ``name`` (one of :data:`OPTIMIZERS`)."""
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None
    return factory(learning_rate, momentum)
