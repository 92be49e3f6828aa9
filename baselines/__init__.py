"""seebench comparators: training-free methods, each registered by name."""
