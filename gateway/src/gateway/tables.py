"""Tables of the gateway service (piccolo). Only this service reads or writes them."""

from piccolo.columns import JSON, Boolean, Float, Integer, Text, Varchar
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
    # Signs this key's webhooks (Standard Webhooks `whsec_...`); kept in clear because signing needs it, shown
    # once at creation. "" for keys made before webhooks: they cannot ask for a callback.
    webhook_secret = Varchar(length=64, default="")
    max_waiting = Integer(null=True, default=None)  # contracts.messages.keys.KeyLimits; NULL: no limit
    max_images_per_job = Integer(null=True, default=None)
    max_running = Integer(null=True, default=None)
    weight = Integer(null=True, default=None)  # fair share; NULL: 1
    # Every job of the key is POSTed to each (one URL a line), with each progress step when webhook_progress is set.
    webhook_urls = Text(default="")
    webhook_progress = Boolean(default=False)


class WebhookRow(Table, tablename="webhook_deliveries"):
    """One webhook of a job and how its delivery went: the job's `callback_url`, or one of its key's webhook URLs."""

    delivery_id = Varchar(length=100, unique=True, index=True)  # see webhooks.delivery_id
    job_id = Varchar(length=64, index=True)
    key_id = Varchar(length=32)
    url = Text()
    source = Varchar(length=16, default="callback")  # "callback" or "key"
    created_at = Float()
    attempts = Integer(default=0)
    last_status = Integer(null=True, default=None)  # the receiver's HTTP status; None: no answer
    last_error = Text(default="")
    delivered_at = Float(null=True, default=None)
    gave_up_at = Float(null=True, default=None)
    progress = Boolean(default=False)  # each progress step too (asked by the caller or set on the key)
    last_seq = Integer(default=0)  # the event seq last POSTed: an older progress step is not sent after it


class KeyDefaultsRow(Table, tablename="key_defaults"):
    """The limits a new key gets when its creation names none: a single row, written by the admin (UI)."""

    limits = JSON(default={})  # contracts.messages.keys.KeyLimits: a new limit needs no migration here
    updated_at = Float()


TABLES: list[type[Table]] = [ApiKeyRow, WebhookRow, KeyDefaultsRow]
