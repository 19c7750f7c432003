"""Plumbing shared by every layer: dispatch to backends, argument checks, the precision rules and
the flat parameter layout. Nothing here is public API; :mod:`mtl_fast` re-exports what is."""
