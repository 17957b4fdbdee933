"""The REST API's OpenAPI document, with the schemas of the contracts as msgspec writes them."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.openapi.plugins import JsonRenderPlugin

from contracts.messages.jobs import SubmitReply
from contracts.messages.render_types import RenderTypeList
from contracts.messages.styles import BuildPrompt, BuiltPrompt, StyleList
from gateway.rest import ErrorBody, NewGeneration
from gateway.results import Generation

# Every Struct the API takes or answers; the nested ones follow.
API_STRUCTS: tuple[type, ...] = (
    NewGeneration,
    SubmitReply,
    Generation,
    RenderTypeList,
    StyleList,
    BuildPrompt,
    BuiltPrompt,
    ErrorBody,
)
SCHEMA_REF = "#/components/schemas/{name}"


def contract_schemas() -> dict[str, Any]:
    """The component schemas of API_STRUCTS, from msgspec: the generator of the MCP tool schemas, and the one that
    agrees with the decoder (litestar's own drops a zero bound such as `ge=0`, writes `oneOf` for `int | float`,
    where 1024 matches twice, and leaves out that unknown fields are refused)."""
    _, components = msgspec.json.schema_components(API_STRUCTS, ref_template=SCHEMA_REF)
    return components


def with_contract_schemas(document: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """`document` with its component schemas replaced by `schemas`; a component they lack is a bug (a Struct
    missing from API_STRUCTS), refused here rather than served with litestar's schema."""
    components = document.get("components", {})
    missing = sorted(set(components.get("schemas", {})) - set(schemas))
    if missing:
        raise RuntimeError(f"add the Structs of components {missing} to API_STRUCTS")
    return {**document, "components": {**components, "schemas": schemas}}


class ContractJsonRenderPlugin(JsonRenderPlugin):
    """Serves the document litestar builds (paths, responses) with the contracts' own schemas."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._schemas = contract_schemas()

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, with_contract_schemas(openapi_schema, self._schemas))
