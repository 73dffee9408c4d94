"""Datasets (Omniglot, LFW-a), their on-disk caches and the episode samplers.

Importing this package registers every built-in dataset, so `load_split` knows each
`data.dataset` name (gaussmem.data.datasets):

* "omniglot": handwritten characters, the Vinyals and Lake splits (gaussmem.data.omniglot);
* "lfw": LFW-a faces, the committed paper split (gaussmem.data.lfw).
"""

from gaussmem.data import lfw as _lfw  # noqa: F401
from gaussmem.data import omniglot as _omniglot  # noqa: F401
