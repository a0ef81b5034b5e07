"""Operator work: prewarm jobs, the inventory, containerd wiring, and the CLI's admin client
and progress display."""
