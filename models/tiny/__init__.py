"""The embedded tiny lab."""
