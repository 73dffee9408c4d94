"""gaussmem: one-shot learning with a memory of Gaussian embeddings.

Reimplements Tseran & Harada (2017), "Memory Augmented Neural Network with Gaussian
Embeddings for One-Shot Learning". Importing the package has no side effects: no data is
read, no device is touched.
"""

__version__ = "0.1.0"
