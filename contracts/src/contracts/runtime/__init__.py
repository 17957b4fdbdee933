"""The runtime every service shares: configuration, logging, the NATS connection, the database, and the
request/reply service loop. One way to do each of these things, used by all services."""
