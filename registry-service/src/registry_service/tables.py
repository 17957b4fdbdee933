"""Tables of the registry service (piccolo). Only this service reads or writes them.

JSON columns hold msgspec-encoded text written and read by `store.py`, so numbers keep their exact type and
size (a seed of 2**64 - 1, a float cfg of 7.0) on every database.
"""

from piccolo.columns import JSON, Boolean, Float, ForeignKey, Integer, Serial, Text, Varchar
from piccolo.columns.base import OnDelete
from piccolo.table import Table


class RenderTypeRow(Table, tablename="render_type"):
    """A named kind of generation bound to a ComfyUI API-format workflow; the current version of it."""

    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)

    name = Varchar(length=64, unique=True, index=True)
    description = Text(default="")
    workflow = JSON()  # ComfyUI API format
    parameter_map = JSON()  # ParameterMap: where each request parameter goes in the workflow
    defaults = JSON()  # RenderDefaults
    limits = JSON()  # RenderLimits
    requirements = JSON()  # Requirements, derived from the workflow on every save
    output_kind = Varchar(length=16, default="image")
    enabled = Boolean(default=True)
    is_default = Boolean(default=False)  # exactly one row has it while any row exists
    version = Integer(default=1)  # the latest row of render_type_version for this render type
    created_at = Float()
    updated_at = Float()
    updated_by = Varchar(length=128, default="")


class RenderTypeVersionRow(Table, tablename="render_type_version"):
    """One saved version of a render type (who, when, what), so an edit can be rolled back."""

    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)

    render_type = ForeignKey(RenderTypeRow, on_delete=OnDelete.cascade, index=True)
    version = Integer()
    snapshot = JSON()  # the RenderType as saved in this version
    changed_by = Varchar(length=128, default="")
    changed_at = Float()
    note = Text(default="")


class RegistryStateRow(Table, tablename="registry_state"):
    """Facts about the registry itself, e.g. that the shipped render types were loaded once."""

    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)

    key = Varchar(length=64, unique=True)
    value = Text(default="")


TABLES: list[type[Table]] = [RenderTypeRow, RenderTypeVersionRow, RegistryStateRow]
