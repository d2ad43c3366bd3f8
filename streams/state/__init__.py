"""State other services read: Redis for the latest statistics, thresholds and cool-downs."""
