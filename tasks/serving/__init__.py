"""Scoring: forecasts from the champion bundle (score), stable shards of a catalogue (shard) and
sharded scoring on workers (sharded)."""
