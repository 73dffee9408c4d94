"""Few-shot methods behind one interface (`FewShotClassifier`) and a name registry.

Importing this package registers every built-in method, so `method_class("mavae")` works
after `import gaussmem.methods`.
"""

from gaussmem.methods import mavae as _mavae  # noqa: F401  (registers "mavae")
from gaussmem.methods.base import FewShotClassifier
from gaussmem.methods.registry import (
    available_methods,
    classifier_from_checkpoint,
    method_class,
    register_method,
)

__all__ = [
    "FewShotClassifier",
    "available_methods",
    "classifier_from_checkpoint",
    "method_class",
    "register_method",
]
