"""Flow control that never empties the agents' queues while records are flowing.

Faust stops delivery into the agents' queues while partitions move (`FlowControlEvent.suspend`), and
`resume()` empties every queue it manages: what sat there was fetched before the rebalance and is fetched
again from the committed offsets. But faust-streaming 0.15.3 also calls `resume()` when delivery is already
running: `Recovery.on_recovery_completed` first resumes the stream partitions, then seeks them to their
committed offsets, then resumes flow control. Records fetched and delivered during that seek sat in the
queues and were dropped, and the consumer did not fetch them again (its read offset had passed them).
Upstream: faust-streaming/faust#596 (open), the same race seen as offsets that stop being committed.

A worker restarted with a backlog lost such records for good. In `test_worker_kill_9_mid_stream_keeps_model_state`
(fed slowly enough that the kill lands mid-stream), the restarted worker missed 5-33 records per partition,
6 runs of 6: both agents that read the readings lost them, or only the busier one. Rows and model updates went
missing, and a record that one agent had taken stayed unacked until shutdown. The clicks' batch buffers
(`streams/runtime/batches.py`) are managed queues too.

Here `resume()` empties the queues only when delivery was suspended. A record delivered before that seek and
fetched again after it can now reach an agent twice. Every ClickHouse writer keeps one row per partition and
offset, the recommender skips offsets it has applied, and the sensor models skip a reading whose
(device, seq, ts) they have seen.
"""

from __future__ import annotations

from mode.utils.queues import FlowControlEvent


class KeepQueuesWhileFlowing(FlowControlEvent):
    def resume(self) -> None:
        if self.is_active():
            return  # nothing to resume, and the queues hold records of the current assignment
        super().resume()
