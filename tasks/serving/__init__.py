"""Scoring: forecasts from the champion bundle (score), stable shards of a catalogue (shard), sharded
scoring on workers (sharded) and the plan of a backfill (backfill)."""
