"""Tables of the prompt service (piccolo). Only this service reads or writes them."""

from piccolo.columns import Boolean, Integer, Serial, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class StyleTable(Table, tablename="style"):
    """One style. `name_key` (the case-folded name) makes names unique regardless of case."""

    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)

    name = Varchar(length=80)
    name_key = Varchar(length=80, unique=True, index=True)
    category = Varchar(length=80, default="")
    positive = Text(default="{prompt}")
    negative = Text(default="")
    render_types = Text(default="[]")  # JSON list of render type names; [] suits every render type
    is_default = Boolean(default=False)
    enabled = Boolean(default=True)
    sort_order = Integer(default=0)
    description = Text(default="")
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class SettingTable(Table, tablename="setting"):
    """Small service-wide values as JSON: the LLM settings, whether the starter styles were loaded."""

    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)

    key = Varchar(length=80, unique=True)
    value = Text(default="null")
    updated_at = Timestamptz(default=TimestamptzNow())


TABLES: list[type[Table]] = [StyleTable, SettingTable]
