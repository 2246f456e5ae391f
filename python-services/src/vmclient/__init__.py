"""vmclient host services."""
