"""Dramatiq broker setup, thin actors and the scheduler process."""
