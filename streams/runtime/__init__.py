"""The Faust app and everything that changes how Faust runs: its patches (installed from `patches.install`),
batch delivery, ordered acks, flow control, time slices, heap policy, the loop watch, topics and Kafka auth."""
