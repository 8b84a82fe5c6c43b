"""MQTT → Kafka bridge (`wharf bridge`): lossless, acknowledged only after Kafka confirmed."""
