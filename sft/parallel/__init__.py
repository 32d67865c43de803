"""Devices and processes: the device and precision, the process group, parallel strategies."""
