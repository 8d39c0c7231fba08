"""The trusted core: counted, rounding-sound primitives and exact counting.

Imports nothing above it."""
