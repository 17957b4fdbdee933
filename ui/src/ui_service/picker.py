"""What the style picker (templates/style_picker.html, static/picker.js) knows of each style."""

from __future__ import annotations

from typing import Any

from contracts.messages.styles import Style

NO_CATEGORY = "Uncategorised"


def picker_styles(styles: list[Style]) -> list[dict[str, Any]]:
    """The enabled styles as the picker lists them, grouped by category (the listing order within one)."""
    offered = [s for s in styles if s.enabled]
    offered.sort(key=lambda s: ((s.category or NO_CATEGORY).lower(), s.sort_order, s.name.lower()))
    return [
        {
            "name": s.name,
            "category": s.category or NO_CATEGORY,
            "render_types": s.render_types,
            "is_default": s.is_default,
            "description": s.description,
        }
        for s in offered
    ]
