"""ClickHouse: the backends, the one exactly-once writer, records to rows (ingest), the dashboard's queries."""
