"""Few-shot methods behind one interface (`FewShotClassifier`) and a name registry.

Importing this package registers every built-in method and how it trains, so
`method_class("protonet")` and `training_class("protonet")` work after
`import gaussmem.methods`:

* "mavae": the paper's memory-augmented VAE (Tseran & Harada 2017);
* "protonet": Prototypical Networks (Snell et al. 2017);
* "matching": Matching Networks (Vinyals et al. 2016), FCE optional;
* "kaiser": Kaiser et al. 2017's memory module.
"""

from gaussmem.methods import kaiser as _kaiser  # noqa: F401
from gaussmem.methods import matching as _matching  # noqa: F401
from gaussmem.methods import mavae as _mavae  # noqa: F401
from gaussmem.methods import mavae_training as _mavae_training  # noqa: F401
from gaussmem.methods import protonet as _protonet  # noqa: F401
from gaussmem.methods.base import FewShotClassifier
from gaussmem.methods.registry import (
    available_methods,
    check_method_settings,
    classifier_from_checkpoint,
    method_class,
    register_method,
    register_training,
    training_class,
)

__all__ = [
    "FewShotClassifier",
    "available_methods",
    "check_method_settings",
    "classifier_from_checkpoint",
    "method_class",
    "register_method",
    "register_training",
    "training_class",
]
