"""Deployment declarations (prefect.yaml): schedules, triggers and the work pool, nothing else."""
