"""Online drift detectors for monitord, registered as detector types through ``register_detectors``."""
