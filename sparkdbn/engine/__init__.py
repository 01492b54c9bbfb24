"""Spark side of sparkdbn: averaging rounds, layer trainers, schedules and fine-tuning."""
