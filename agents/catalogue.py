"""Catalogue changes: each valid change copied to every partition of the fan-out topic.

Catalogue: `wharf.shop.catalogue` (keyed by item_id; `POST /catalogue` writes it) says
that an item was removed or added back. `fan_out_catalogue` copies each change to every
partition of an internal topic co-partitioned with the clicks, so every shard applies
it in order with its clicks (`remove_item`: never recommended again).
"""

from __future__ import annotations

import asyncio

from schemas import codec
from schemas.events import CatalogueChange
from streams.runtime.acks import OrderedAcker
from streams.runtime.app import app, commerce_topics, limits, topics
from streams.sinks.ingest import valid_or_dead_letter
from agents.partitions import P


@app.batch_agents.agent(commerce_topics.catalogue, name="wharf.commerce-catalogue", max_records=1000, within=0.05)
async def fan_out_catalogue(agent):  # noqa: ANN001 - streams.runtime.batches.BatchAgent
    """Copy every valid catalogue change to each partition of the co-partitioned fan-out topic, then ack.

    A batch agent: changes are rare, and a Faust agent's `noack_take` wakes every `within` (50 ms) with nothing
    to take, about 0.3 ms of the worker's loop each time; a batch agent starts its timer at the first record."""
    acker = OrderedAcker()
    async for events in agent.batches():
        for event in events:
            done = acker.track(event)
            change = await valid_or_dead_letter(event, CatalogueChange, dlq_topic=topics["topic_dead_letters"], limits=limits)
            if change is None:
                done()
                continue
            value = codec.dumps(change)
            futs = [await commerce_topics.catalogue_fanout.send(key=change.item_id.encode(), value=value, partition=p) for p in range(P)]
            await asyncio.gather(*futs)
            done()
