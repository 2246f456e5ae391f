"""vmclient-admin: the datacenter side (init, publish, list, enrol, assign)."""
