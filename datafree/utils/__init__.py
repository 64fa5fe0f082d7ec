"""Small helpers shared by the entry scripts: registries, logging, seeding, devices."""
