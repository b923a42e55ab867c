"""Builders shared by several test files: import them as `from tests.helpers.<module> import ...`, nothing else."""
