"""HTTP layer: thin FastAPI routers, error mapping, health, metrics."""
