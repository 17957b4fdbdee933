from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import Column
from piccolo.columns.column_types import Boolean, Float, Integer, Text, Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-02T09:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "webhook URLs per API key; one delivery row per webhook of a job (webhook_deliveries)"

TABLE = "webhook_deliveries"
# name -> (column class, default, null, unique, index, length)
DELIVERY_COLUMNS: dict[str, tuple[type[Column], object, bool, bool, bool, int | None]] = {
    "delivery_id": (Varchar, "", False, True, True, 100),
    "job_id": (Varchar, "", False, False, True, 64),
    "key_id": (Varchar, "", False, False, False, 32),
    "url": (Text, "", False, False, False, None),
    "source": (Varchar, "callback", False, False, False, 16),
    "created_at": (Float, 0.0, False, False, False, None),
    "attempts": (Integer, 0, False, False, False, None),
    "last_status": (Integer, None, True, False, False, None),
    "last_error": (Text, "", False, False, False, None),
    "delivered_at": (Float, None, True, False, False, None),
    "gave_up_at": (Float, None, True, False, False, None),
    "progress": (Boolean, False, False, False, False, None),
    "last_seq": (Integer, 0, False, False, False, None),
}


def _params(default: object, null: bool, unique: bool, index: bool, length: int | None = None) -> dict[str, object]:
    params: dict[str, object] = {
        "default": default,
        "null": null,
        "primary_key": False,
        "unique": unique,
        "index": index,
        "index_method": IndexMethod.btree,
        "choices": None,
        "db_column_name": None,
        "secret": False,
    }
    if length is not None:
        params["length"] = length
    return params


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="gateway", description=DESCRIPTION)
    for key_column, key_class, key_default in (("webhook_urls", Text, ""), ("webhook_progress", Boolean, False)):
        manager.add_column(
            table_class_name="ApiKeyRow",
            tablename="api_key",
            column_name=key_column,
            db_column_name=key_column,
            column_class_name=key_class.__name__,
            column_class=key_class,
            params=_params(key_default, False, False, False),
            schema=None,
        )
    manager.add_table(class_name="WebhookRow", tablename=TABLE, schema=None, columns=None)
    for name, (column_class, default, null, unique, index, length) in DELIVERY_COLUMNS.items():
        manager.add_column(
            table_class_name="WebhookRow",
            tablename=TABLE,
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params=_params(default, null, unique, index, length),
            schema=None,
        )
    return manager
