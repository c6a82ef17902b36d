"""The fleet as the hub sees it: the device inventory, device sessions, desired state (and, later, rollouts)."""
