"""convert-role: Ansible roles in, services (accelerator.graph's format) and a coverage report out."""
