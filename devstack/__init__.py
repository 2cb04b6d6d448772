"""The embedded development stack: `suanwang up`'s supervisor and the embedded Kafka-protocol broker."""
