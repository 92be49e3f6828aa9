"""Backbones: the base class (base.py), the families (llava.py, qwen2_vl.py), the loader that picks
one for a checkpoint (loading.py), and random-init ones for tests and timing (random.py, synthetic.py)."""
