"""The event contract: Avro schemas, topics, the wire codec and the ClickHouse DDL, defined once."""
