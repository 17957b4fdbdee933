from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Float
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-02T09:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "model switch time of a generation"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="stats", description=DESCRIPTION)
    manager.add_column(
        table_class_name="GenerationRow",
        tablename="generation",
        column_name="model_switch_ms",
        db_column_name="model_switch_ms",
        column_class_name="Float",
        column_class=Float,
        params={
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )
    return manager
