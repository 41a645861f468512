"""What a module of izreg leans on of other libraries' private names (tests of izreg.http.internals' lists)."""

from __future__ import annotations

import ast
import inspect


def private_names_used(module, own_attributes: tuple[str, ...] = ()) -> set[str]:
    """
    The private names of others that C{module} leans on: names it imports,
    attributes it reads or sets that it does not define itself (but for
    C{own_attributes}), and the methods its classes override (a base class
    has them: rename them there, and the override is never called).
    """
    tree = ast.parse(inspect.getsource(module))
    own = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    own |= {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)}
    own |= set(own_attributes)
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    for cls in vars(module).values():
        if isinstance(cls, type) and cls.__module__ == module.__name__:
            for name in vars(cls):
                if any(hasattr(base, name) for base in cls.__mro__[1:]):
                    used.add(name)  # an override
                else:
                    own.add(name)  # a method of its own
    return {name for name in used if name.startswith("_") and not name.startswith("__")} - own
