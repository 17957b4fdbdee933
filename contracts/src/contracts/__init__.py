"""GenImage Hub contracts: every NATS subject, message and event the services exchange.

Services depend on this package and never on each other. Messages are msgspec Structs sent as JSON.
"""

from contracts.envelope import Reply
from contracts.errors import ErrorCode, ErrorInfo, HubError

__all__ = ["ErrorCode", "ErrorInfo", "HubError", "Reply"]
