"""Network nodes (discovery and search for domains) and a domain's membership of one."""
