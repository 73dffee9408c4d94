"""Where gaussmem finds datasets and keeps its caches: one setting each.

Data directory: `--data-dir`, else `$GAUSSMEM_DATA`, else `$XDG_DATA_HOME/gaussmem`
(default `~/.local/share/gaussmem`). It holds one folder per dataset:
`omniglot/images_background.zip`, `omniglot/images_evaluation.zip`, `lfw/lfwa.tar.gz`.

Cache directory: `--cache-dir`, else `$GAUSSMEM_CACHE`, else `$XDG_CACHE_HOME/gaussmem`
(default `~/.cache/gaussmem`). Preprocessed arrays go here, never next to the source
data, because the data directory may be read-only (shared or CI machines).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "GAUSSMEM_DATA"
CACHE_ENV_VAR = "GAUSSMEM_CACHE"
#: Where `gaussmem data download` fetches Omniglot's two zips (Lake et al.'s release).
OMNIGLOT_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
#: The name of the LFW-a face pack inside `<data dir>/lfw/`.
LFW_PACK_NAME = "lfwa-faces.npz"


def _xdg_dir(env_var: str, fallback: Path) -> Path:
    value = os.environ.get(env_var)
    return Path(value) if value else fallback


def default_data_dir() -> Path:
    """The per-user data directory used when neither flag nor environment variable is set."""
    return _xdg_dir("XDG_DATA_HOME", Path.home() / ".local" / "share") / "gaussmem"


def default_cache_dir() -> Path:
    """The per-user cache directory used when neither flag nor environment variable is set."""
    return _xdg_dir("XDG_CACHE_HOME", Path.home() / ".cache") / "gaussmem"


def _resolve(cli_value: str | os.PathLike[str] | None, env_var: str, default: Path) -> Path:
    """The flag, else the environment variable, else `default`; `~` expanded."""
    if cli_value:
        return Path(cli_value).expanduser().resolve()
    if os.environ.get(env_var):
        return Path(os.environ[env_var]).expanduser().resolve()
    return default


def resolve_data_dir(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """Return the data directory: the flag, else `$GAUSSMEM_DATA`, else the default."""
    return _resolve(cli_value, DATA_ENV_VAR, default_data_dir())


def resolve_cache_dir(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache directory: the flag, else `$GAUSSMEM_CACHE`, else the default."""
    return _resolve(cli_value, CACHE_ENV_VAR, default_cache_dir())
