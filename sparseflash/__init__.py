"""sparseflash: block-sparse FlashAttention for PyTorch, driven by a small pattern language.

    import sparseflash
    o = sparseflash.attention(q, k, v, pattern="local(256)+global(4)")   # q, k, v: (B, H, N, D)

Importing the package is light: triton is imported when a kernel first runs, matplotlib when a
picture is first drawn.
"""

# Imported eagerly: a lazy attribute named like its submodule would be replaced by the module.
from .attention import attention
from .blockmask import BlockMask, SparsityWarning, compile_mask, mask_from_dense
from .errors import PatternError
from .parsing import PRIMITIVES, parse
from .pattern import Pattern

__version__ = "0.1.0"

# Public names that live in modules with heavier imports, loaded on first use.
_LAZY = {
    "show": "sparseflash.viz",
    "stats": "sparseflash.viz",
    "explain": "sparseflash.viz",
    "render_ascii": "sparseflash.viz",
}

__all__ = ["attention", "BlockMask", "SparsityWarning", "Pattern", "PatternError", "PRIMITIVES", "compile_mask", "mask_from_dense", "parse", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparseflash' has no attribute {name!r}")
