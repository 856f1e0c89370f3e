"""The coordinator: runs as a phase graph, gates, leases, restart safety."""
