"""The hub's message types, one module per area: base (Record, Request), events, health, instances, jobs, keys,
render_types, stats, styles. Import them from their module (`from contracts.messages.jobs import JobView`)."""
