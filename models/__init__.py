"""seebench machinery: backbones, the executor, plans, own-weight architectures, the tiny lab."""
