"""The HTTP API (aiohttp): history from ClickHouse, live events from Kafka, tasks to Kafka, statements."""
