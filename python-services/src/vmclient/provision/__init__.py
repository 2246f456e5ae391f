"""Provisioning: VM recipes and their libvirt domains (pure cores; adapters come later)."""
