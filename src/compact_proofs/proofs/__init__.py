"""Proof strategies: each is ``search`` (untrusted, uncounted) plus ``check`` (trusted, counted)."""
