"""Import paths ``module:attribute``: how users name their own architectures and data loaders.

The code a checkpoint or a dataset spec refers to is always the code the user names, imported
from an installed package or ``PYTHONPATH``; nothing is ever unpickled from a file. The syntax is
the one of setuptools entry points: ``mypkg.nets:Net``, ``mypkg.data:load_test``, with a dotted
qualified name after the colon (``mypkg.nets:Outer.Inner``).

Example:
    >>> cls = import_object("collections:OrderedDict", "architecture")
    >>> import_path_of(cls)
    'collections:OrderedDict'
"""

from __future__ import annotations

import importlib
import re
from typing import Any

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


def is_import_path(spec: object) -> bool:
    """True for a string of the form ``package.module:attribute``."""
    return isinstance(spec, str) and bool(_IMPORT_PATH.match(spec))


def import_object(path: str, what: str) -> Any:
    """The object an import path ``module:qualname`` names.

    Args:
        path: ``package.module:Name`` (or ``package.module:Outer.Name``).
        what: What the object is for, used in messages (``"architecture"``, ``"dataset"``).

    Raises:
        ValueError: ``path`` is not an import path, its module cannot be imported, or the
            module has no such attribute; the message says what to write.
    """
    if not is_import_path(path):
        raise ValueError(
            f"{what} {path!r} is not an import path: write it as package.module:Name (e.g. "
            "mypkg.nets:Net), with the package importable (installed or on PYTHONPATH)"
        )
    module_name, qualname = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{what} {path!r}: cannot import module {module_name!r} ({err}); install the "
            "package (pip install -e .) or add its folder to PYTHONPATH"
        ) from err
    for part in qualname.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            raise ValueError(
                f"{what} {path!r}: {module_name}:{qualname} has no attribute {part!r} (it has: "
                f"{', '.join(public) or 'nothing public'}); check the name after the colon"
            )
        obj = getattr(obj, part)
    return obj


def import_path_of(obj: Any) -> str:
    """``module:QualName`` of a class or function, checked to import back to the same object.

    Raises:
        ValueError: ``obj`` is defined in ``__main__`` or inside a function (it cannot be
            imported again from another process), or its path does not lead back to it.
    """
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    name = getattr(obj, "__name__", type(obj).__name__)
    if not module or not qualname:
        raise ValueError(f"{name} has no module and qualified name to import it by")
    if module == "__main__" or "<locals>" in qualname:
        where = "the script being run (__main__)" if module == "__main__" else "a function"
        raise ValueError(
            f"{name} is defined in {where}, so it cannot be imported again when loading: move "
            f"it into a module (e.g. mynets.py next to the script, then `from mynets import "
            f"{name}`), or register it (robustbench_local.models.register_model) and pass arch="
        )
    path = f"{module}:{qualname}"
    try:
        found = import_object(path, "class")
    except ValueError as err:
        raise ValueError(f"{name} cannot be imported back from {path!r}: {err}") from err
    if found is not obj:
        raise ValueError(
            f"{path!r} imports another object than {name} (was it redefined or reloaded?); "
            "pass arch= explicitly"
        )
    return path


def load_refusal(err: BaseException) -> str:
    """A one-line reason why a ``weights_only`` load refused a file.

    Drops torch's advice to reload with ``weights_only=False`` (which would run code from the
    file) and keeps the global it refused, e.g. ``Unsupported global: GLOBAL
    numpy._core.multiarray._reconstruct``.
    """
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if found:
        return f"it pickles Python objects ({found.group(0)})"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


__all__ = ["import_object", "import_path_of", "is_import_path", "load_refusal"]
