"""Bundled resources: the census vocabulary and the GENCODE v44 id -> symbol table."""
