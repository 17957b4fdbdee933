from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import JSON, Float
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-02T09:05:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "the limits of new api keys"

COMMON = {
    "null": False,
    "primary_key": False,
    "unique": False,
    "index": False,
    "index_method": IndexMethod.btree,
    "choices": None,
    "db_column_name": None,
    "secret": False,
}


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="gateway", description=DESCRIPTION)
    manager.add_table(class_name="KeyDefaultsRow", tablename="key_defaults", schema=None, columns=None)
    manager.add_column(
        table_class_name="KeyDefaultsRow",
        tablename="key_defaults",
        column_name="limits",
        db_column_name="limits",
        column_class_name="JSON",
        column_class=JSON,
        params={"default": "{}", **COMMON},
        schema=None,
    )
    manager.add_column(
        table_class_name="KeyDefaultsRow",
        tablename="key_defaults",
        column_name="updated_at",
        db_column_name="updated_at",
        column_class_name="Float",
        column_class=Float,
        params={"default": 0.0, **COMMON},
        schema=None,
    )
    return manager
