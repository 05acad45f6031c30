"""memfs: retrieval memory as a filesystem: path rules (`paths.py`), a volume in SQLite + FAISS
(`volume.py`), the mounted namespace and fsck (`fs.py`), directory import (`importer.py`), the
kernel's embedding queue (`embedding.py`) and retrieval-augmented prompts (`rag.py`).

Owns: `$LLMOS_HOME/memfs/` and the embedding work queue.
Must not import: proc, tools, models, modules or the facade `kernel.py`; only `errors`, `lib` and
`sched`; no engine library at module level (the embedder and the FAISS index come from `llmos.drivers`,
lazily, when a volume opens). The facade imports this package lazily: it loads numpy.
"""

from .fs import MemFS
from .paths import MemNotFoundError, MemPathError

__all__ = ["MemFS", "MemNotFoundError", "MemPathError"]
