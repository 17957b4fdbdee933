"""ComfyUI API-format workflows: parsing an admin's JSON and checking that the graph is one ComfyUI can run.

API format: `{node_id: {"class_type": str, "inputs": {name: value | [source_node_id, output_index]}}}`
(`_meta` with a title may ride along). Every list value of an input is a link, as ComfyUI reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, Final

from contracts.errors import ErrorCode, HubError

HOW_TO_EXPORT: Final = (
    "In ComfyUI, turn on the developer options (Settings → Comfy → 'Enable dev mode options'; older versions: "
    "the gear icon → 'Enable Dev mode Options'), then export with Workflow → 'Export (API)' (older menus: "
    "'Save (API Format)') and import that file."
)
MAX_NODES: Final = 2000


def invalid(message: str, *, field: str = "workflow", details: dict[str, object] | None = None) -> HubError:
    return HubError(ErrorCode.INVALID_REQUEST, message, field=field, details=details)


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for messages ("array", not Python's "list")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (ComfyUI cannot read it)")


def parse_workflow_json(text: str, *, field: str = "workflow_json") -> dict[str, Any]:
    """The workflow in `text`, or an error saying where the JSON is broken."""
    if not text.strip():
        raise invalid(
            "the workflow is empty; paste or upload the JSON exported from ComfyUI. " + HOW_TO_EXPORT, field=field
        )
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise invalid(
            f"the workflow is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            "Export it again from ComfyUI instead of editing it by hand. " + HOW_TO_EXPORT,
            field=field,
            details={"line": exc.lineno, "column": exc.colno},
        ) from None
    except ValueError as exc:
        raise invalid(f"the workflow is not valid JSON: {exc}", field=field) from None
    if not isinstance(value, dict):
        raise invalid(
            f"the workflow must be a JSON object of nodes, not a JSON {json_kind(value)}. " + HOW_TO_EXPORT,
            field=field,
        )
    return unwrap_prompt_body(value)


def unwrap_prompt_body(value: dict[str, Any]) -> dict[str, Any]:
    """A `POST /prompt` body (`{"prompt": {...}, "client_id": ...}`) holds the workflow under "prompt"."""
    prompt = value.get("prompt")
    if (
        isinstance(prompt, dict)
        and prompt
        and all(isinstance(node, dict) and "class_type" in node for node in prompt.values())
    ):
        return prompt
    return value


def is_link(value: Any) -> bool:
    return isinstance(value, list)


def links_of(node: dict[str, Any]) -> Iterator[tuple[str, str, int]]:
    """(input name, source node id, source output index) of every linked input of a node."""
    for name, value in node["inputs"].items():
        if is_link(value):
            yield name, value[0], value[1]


def describe_node(workflow: dict[str, Any], node_id: str) -> str:
    node = workflow.get(node_id)
    class_type = node.get("class_type") if isinstance(node, dict) else None
    return f"node {node_id} ({class_type})" if class_type else f"node {node_id}"


def check_workflow(workflow: dict[str, Any], *, field: str = "workflow") -> None:
    """Raise a clear error unless `workflow` is an API-format graph whose links all lead to existing nodes."""
    if "nodes" in workflow and isinstance(workflow.get("nodes"), list):
        raise invalid(
            'this is ComfyUI\'s UI workflow format (it has top-level "nodes" and "links" arrays), which only '
            "the ComfyUI editor reads; the hub needs the API format. " + HOW_TO_EXPORT,
            field=field,
            details={"format": "ui", "top_level_keys": sorted(workflow)[:20]},
        )
    if not workflow:
        raise invalid("the workflow has no nodes. " + HOW_TO_EXPORT, field=field)
    if len(workflow) > MAX_NODES:
        raise invalid(f"the workflow has {len(workflow)} nodes; at most {MAX_NODES} are accepted", field=field)
    for node_id, node in workflow.items():
        _check_node(node_id, node, field)
    for node_id, node in workflow.items():
        for input_name, value in node["inputs"].items():
            if is_link(value):
                _check_link(workflow, node_id, input_name, value, field)
    _check_acyclic(workflow, field)


def _check_node(node_id: str, node: Any, field: str) -> None:
    where = f"{field}.{node_id}"
    if not node_id:
        raise invalid('a node has an empty id; node ids are strings such as "3"', field=field)
    if not isinstance(node, dict):
        raise invalid(
            f'node {node_id} is a JSON {json_kind(node)}, not an object with "class_type" and "inputs"; '
            "this does not look like ComfyUI's API format. " + HOW_TO_EXPORT,
            field=where,
        )
    class_type = node.get("class_type")
    if not isinstance(class_type, str) or not class_type.strip():
        raise invalid(
            f'node {node_id} has no "class_type" (the ComfyUI node class, e.g. "KSampler"); '
            "ComfyUI cannot run a node without it. " + HOW_TO_EXPORT,
            field=f"{where}.class_type",
        )
    inputs = node.get("inputs")
    if not isinstance(inputs, dict):
        raise invalid(
            f'node {node_id} ({class_type}) has no "inputs" object; every API-format node has one '
            "(it may be empty: {})",
            field=f"{where}.inputs",
        )
    for input_name, value in inputs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid(
                f"input `{input_name}` of node {node_id} ({class_type}) is {value}, which JSON cannot carry to ComfyUI",
                field=f"{where}.inputs.{input_name}",
            )


def _check_link(workflow: dict[str, Any], node_id: str, input_name: str, value: list[Any], field: str) -> None:
    where = f"{field}.{node_id}.inputs.{input_name}"
    here = f"input `{input_name}` of {describe_node(workflow, node_id)}"
    if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool):
        raise invalid(
            f'{here} is {json.dumps(value)}; a link must be [source node id, output index], e.g. ["4", 0]',
            field=where,
        )
    source, index = value
    if not isinstance(source, str):
        raise invalid(
            f'{here} links to {json.dumps(source)}; the source node id must be a string, e.g. ["{source}", {index}]',
            field=where,
        )
    if source not in workflow:
        raise invalid(
            f"{here} links to node {source}, which is not in the workflow (a dangling link: was the node deleted "
            "or left out of the export?)",
            field=where,
            details={"missing_node": source, "nodes": sorted(workflow, key=_node_order)},
        )
    if index < 0:
        raise invalid(f"{here} links to output {index} of node {source}; output indexes start at 0", field=where)


def _check_acyclic(workflow: dict[str, Any], field: str) -> None:
    """ComfyUI runs nodes in dependency order, so a cycle can never run."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in workflow:
        if start in state:
            continue
        stack: list[tuple[str, Iterator[tuple[str, str, int]]]] = [(start, links_of(workflow[start]))]
        state[start] = 1
        while stack:
            node_id, pending = stack[-1]
            step = next(pending, None)
            if step is None:
                state[node_id] = 2
                stack.pop()
                continue
            source = step[1]
            if state.get(source) == 1:
                path = [n for n, _ in stack]
                cycle = [*path[path.index(source) :], source]
                raise invalid(
                    f"the workflow has a cycle ({' → '.join(cycle)}); ComfyUI can only run a graph without loops",
                    field=field,
                    details={"cycle": cycle},
                )
            if source not in state:
                state[source] = 1
                stack.append((source, links_of(workflow[source])))


def _node_order(node_id: str) -> tuple[int, str]:
    """Numeric ids in numeric order, others after them."""
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def node_ids_in_order(workflow: dict[str, Any]) -> list[str]:
    return sorted(workflow, key=_node_order)
