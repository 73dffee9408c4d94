"""gaussmem: one-shot learning with a memory of Gaussian embeddings.

Reimplements Tseran & Harada (2017), "Memory Augmented Neural Network with Gaussian
Embeddings for One-Shot Learning". Importing the package has no side effects: no data is
read, no device is touched.
"""

__version__ = "0.1.0"

__all__ = ["Recognizer", "__version__"]


def __getattr__(name: str) -> object:
    """`gaussmem.Recognizer`, imported on first use: importing gaussmem stays light (no
    torch import until a recognizer is asked for)."""
    if name == "Recognizer":
        from gaussmem.recognizer import Recognizer

        return Recognizer
    raise AttributeError(f"module 'gaussmem' has no attribute {name!r}")
