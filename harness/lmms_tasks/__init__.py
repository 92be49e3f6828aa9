"""lmms-eval task definitions of the shapes suite (pass this folder to --include_path)."""
