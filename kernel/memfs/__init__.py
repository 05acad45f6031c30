"""memfs: retrieval memory as a filesystem (see fs.py for the namespace, volume.py for storage)."""

from .fs import MemFS
from .paths import MemNotFoundError, MemPathError

__all__ = ["MemFS", "MemNotFoundError", "MemPathError"]
