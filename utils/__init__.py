"""Small helpers shared across the framework's packages."""
