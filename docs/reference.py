"""The documentation's generated pages: configuration keys, crystal-sheet columns, dataset columns.

Each comes from the one place that defines it (``config/config.schema.yaml``,
``config/crystals.schema.yaml``, :data:`mdxrd.dataset.COLUMNS`); ``docs/conf.py`` writes them into
``docs/_generated`` on every build, where the pages include them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _allowed(node: dict[str, Any]) -> str:
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(filter(None, (_allowed(n) for n in node["oneOf"])))
    kind = node.get("type", "")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    bounds = [f"{op} {node[k]}" for k, op in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                                              ("exclusiveMaximum", "<")) if k in node]
    return " ".join(filter(None, [kind, ", ".join(bounds)]))


def _rows(node: dict[str, Any], prefix: str, defs: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "$ref" in node:
        node = {**defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    rows = []
    if node.get("type") == "object" and "properties" in node:
        for key, child in node["properties"].items():
            rows += _rows(child, f"{prefix}.{key}" if prefix else key, defs)
        if prefix and not rows:
            rows.append((prefix, "object", "", node.get("description", "")))
        return rows
    default = node.get("default", "")
    default = "" if default == "" else f"`{yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}`"
    return [(prefix, _allowed(node), default, node.get("description", ""))]


def config_reference() -> str:
    """Markdown tables of every configuration key: allowed values, default, meaning."""
    schema = yaml.safe_load((REPO / "config" / "config.schema.yaml").read_text())
    defs = schema.get("$defs", {})
    out = []
    for key, node in schema["properties"].items():
        out.append(f"### `{key}`\n")
        if node.get("description") and node.get("type") == "object":
            out.append(_cell(node["description"]) + "\n")
        out.append("| key | allowed | default | meaning |\n|---|---|---|---|")
        if key == "crystals":
            out.append(f"| `crystals` | {_cell(_allowed(node))} | | {_cell(node.get('description', ''))} |")
            out.append("\nEach entry of the list form (a crystal sheet's columns are the same fields):\n\n"
                       "| key | allowed | default | meaning |\n|---|---|---|---|")
            rows = _rows(defs["crystal"], "", defs)
        else:
            rows = _rows(node, key, defs)
        out += [f"| `{k}` | {_cell(a)} | {d} | {_cell(m)} |" for k, a, d, m in rows]
        out.append("")
    return "\n".join(out)


def sheet_columns() -> str:
    """Markdown table of the crystal sheet's columns."""
    schema = yaml.safe_load((REPO / "config" / "crystals.schema.yaml").read_text())
    required = set(schema.get("required", []))
    depends = schema.get("dependentRequired", {})
    lines = ["| column | allowed | meaning |", "|---|---|---|"]
    for col, node in schema["properties"].items():
        meaning = node.get("description", "")
        if col in required:
            meaning = "required. " + meaning
        if col in depends:
            meaning += f" (needs {', '.join(f'`{d}`' for d in depends[col])})"
        lines.append(f"| `{col}` | {_cell(_allowed(node) or node.get('pattern', ''))} | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def dataset_columns() -> str:
    """Markdown table of the dataset's columns (:data:`mdxrd.dataset.COLUMNS`)."""
    from mdxrd.dataset import COLUMNS

    lines = ["| column | type | meaning (units in the name or here) |", "|---|---|---|"]
    lines += [f"| `{name}` | `{_cell(kind)}` | {_cell(meaning)} |" for name, kind, meaning in COLUMNS]
    return "\n".join(lines) + "\n"


def write_generated(out: Path) -> None:
    """Write the three generated pages' tables into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("config_reference.md", config_reference()), ("sheet_columns.md", sheet_columns()),
                       ("dataset_columns.md", dataset_columns())):
        path = out / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
