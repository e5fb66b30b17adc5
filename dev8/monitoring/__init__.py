"""Where events go besides the API: structured logs, Prometheus metrics, alerts, webhooks."""
