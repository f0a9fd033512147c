"""Griffe extension: the docstrings' Sphinx roles as Markdown, for mkdocstrings.

keepmix's docstrings write cross-references the Sphinx way (``:class:`keepmix.placers.KeepPlacer```,
``:func:`~keepmix.sampling.selection_keys```), which Markdown would show verbatim. Once the
package is loaded, a role whose target resolves to a public, documented keepmix object becomes
an autorefs link to it (``[`KeepPlacer`][keepmix.placers.KeepPlacer]``, re-exports followed to
where the object is defined); any other role (a short or private name, an object the reference
does not render) becomes plain code. The source files stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`(~?)([^`<>]+?)`")


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]  # not an alias: an Object


def _rendered(obj: griffe.Object) -> bool:
    """Whether the reference renders ``obj``: public and documented, as are its parents
    below the module (mkdocs.yml: filters "!^_", show_if_no_docstring false)."""
    node: griffe.Object | None = obj
    while node is not None and not node.is_module:
        if node.name.startswith("_") or not node.docstring:
            return False
        node = node.parent
    return node is not None and not any(part.startswith("_") for part in node.path.split("."))


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "keepmix":
            return

        def replace(m: re.Match[str]) -> str:
            short, target = m.group(1) == "~", m.group(2).strip()
            label = target.rsplit(".", 1)[-1] if short else target
            try:
                found = loader.modules_collection[target]
                final = found.final_target if found.is_alias else found
            except Exception:  # not a keepmix path, or an alias that does not resolve
                return f"`{label}`"
            if not _rendered(final):
                return f"`{label}`"
            return f"[`{label}`][{final.path}]"

        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _ROLE.sub(replace, obj.docstring.value)
