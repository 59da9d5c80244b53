"""Training: pure loss functions, batch samplers, data modules, Lightning modules and the trainer factory."""
