"""The push-down agent: what the hub wants this device to run (``tandem/v1/devices/{id}/desired``), applied
without a restart and reported back on ``…/reported``."""
