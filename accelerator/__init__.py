"""Directord Accelerator: a ZeroMQ job engine with persistent agents, used to run Ansible faster."""

__version__ = "0.1.0"
