"""Identity: communication resources, access keys, applications and secrets."""
