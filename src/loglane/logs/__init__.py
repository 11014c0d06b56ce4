"""The log: durable, partitioned topics that carry commands and events between services."""
