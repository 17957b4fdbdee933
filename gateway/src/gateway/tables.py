"""Tables of the gateway service (piccolo). Only this service reads or writes them."""

from piccolo.columns import Float, Text, Varchar
from piccolo.table import Table


class ApiKeyRow(Table, tablename="api_key"):
    """An API key for MCP and REST callers. Only the SHA-256 hash of the secret is stored."""

    key_id = Varchar(length=32, unique=True, index=True)
    name = Varchar(length=80)
    prefix = Varchar(length=16)  # the first characters of the secret, shown so an admin can tell keys apart
    secret_hash = Varchar(length=64, unique=True, index=True)  # hex SHA-256 of the whole secret
    created_at = Float()
    last_used_at = Float(null=True, default=None)
    revoked_at = Float(null=True, default=None)
    note = Text(default="")
    scopes = Text(default="")  # space-separated names from contracts.messages.keys.SCOPES


TABLES: list[type[Table]] = [ApiKeyRow]
