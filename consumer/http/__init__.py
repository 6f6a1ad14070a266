"""The worker's HTTP surface for operations: health and readiness, and Prometheus metrics."""
